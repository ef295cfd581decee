//! Uploaded bundles are untrusted input to a gateway that runs as root: links out of the
//! bundle, hard links and special files are refused at upload, the manifest is read without
//! ever leaving the bundle (also from trees stored before those checks), unpacking is bounded,
//! and nothing is kept setuid or writable by others. All through the real upload + deploy API.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use flate2::{Compress, Compression, Crc, FlushCompress};
use reqwest::Method;
use serde_json::json;
use tar::{EntryType, Header};
use virga_testkit::bundle::{targz, Entry};
use virga_testkit::{Answer, Platform};

const MANIFEST: &str = r#"{"lang":"test","env":{"fprocess":"sh handler.sh","mode":"serializing"}}"#;
const HANDLER: &str = "echo \"LEAKED=$LEAKED\"";

fn deploy(p: &Platform, name: &str, hex: &str) -> Answer {
    p.send_json(
        Method::POST,
        "/system/functions",
        json!({"service": name, "image": format!("virga.local/{name}@sha256:{hex}")}),
    )
}

fn link<'a>(path: &'a str, target: &'a str) -> Entry<'a> {
    (path, EntryType::Symlink, 0o777, target, b"")
}

fn special(path: &str, kind: EntryType) -> Entry<'_> {
    (path, kind, 0o666, "", b"")
}

/// What `bundles/` holds besides its (empty) `tmp/`.
fn stored(data_dir: &Path) -> Vec<String> {
    let bundles = data_dir.join("bundles");
    let mut out: Vec<String> = fs::read_dir(&bundles)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "tmp")
        .collect();
    out.extend(
        fs::read_dir(bundles.join("tmp"))
            .unwrap()
            .map(|e| format!("tmp/{}", e.unwrap().file_name().to_string_lossy())),
    );
    out
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Host files only root may read: a manifest-shaped one and a JSON string.
fn host_secrets(dir: &Path) -> (String, String) {
    let manifest = dir.join("root-only.json");
    fs::write(
        &manifest,
        r#"{"env":{"fprocess":"sh handler.sh","mode":"serializing","LEAKED":"host-secret-4711"}}"#,
    )
    .unwrap();
    let string = dir.join("root-only-string.json");
    fs::write(&string, r#""host-secret-0815""#).unwrap();
    for f in [&manifest, &string] {
        fs::set_permissions(f, fs::Permissions::from_mode(0o600)).unwrap();
    }
    let s = |p: &Path| p.to_string_lossy().into_owned();
    (s(&manifest), s(&string))
}

#[test]
fn uploads_with_links_out_hard_links_or_special_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let (manifest, string) = host_secrets(host.path());
    let p = Platform::start(dir.path());
    let handler: Entry = (
        "handler.sh",
        EntryType::Regular,
        0o644,
        "",
        HANDLER.as_bytes(),
    );
    let (manifest, string) = (manifest.as_str(), string.as_str());
    let cases: Vec<(Vec<Entry>, &str)> = vec![
        (
            vec![handler, link("virga-bundle.json", manifest)],
            "virga-bundle.json",
        ),
        (
            vec![handler, link("virga-bundle.json", string)],
            "virga-bundle.json",
        ),
        (
            vec![handler, link("virga-bundle.json", "/dev/zero")],
            "virga-bundle.json",
        ),
        (vec![handler, link("lib/up", "../../etc/shadow")], "lib/up"),
        (
            vec![
                handler,
                link("d/up", ".."),
                link("virga-bundle.json", "d/up/../etc/passwd"),
            ],
            "virga-bundle.json",
        ),
        (
            vec![handler, ("h", EntryType::Link, 0o644, "handler.sh", b"")],
            "h",
        ),
        (vec![handler, special("zero", EntryType::Char)], "zero"),
        (vec![handler, special("pipe", EntryType::Fifo)], "pipe"),
    ];
    for (entries, entry) in cases {
        let entries: Vec<Entry> = entries;
        let started = Instant::now();
        let (hex, r) = p.upload_bundle(targz(&entries));
        assert_eq!(r.status, 400, "{entries:?}: {}", r.text);
        assert!(r.text.contains(&format!("entry {entry} ")), "{}", r.text);
        assert!(!r.text.contains("host-secret"), "{}", r.text);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(p
            .get_json("/system/functions")
            .as_array()
            .unwrap()
            .is_empty());
        assert_eq!(
            deploy(&p, "f", &hex).status,
            400,
            "a refused bundle is not stored"
        );
    }
    assert!(stored(dir.path()).is_empty(), "{:?}", stored(dir.path()));
    // Links that stay inside are fine.
    let (hex, r) = p.upload_bundle(targz(&[
        (
            "virga-bundle.json",
            EntryType::Regular,
            0o644,
            "",
            MANIFEST.as_bytes(),
        ),
        (
            "lib/handler.sh",
            EntryType::Regular,
            0o644,
            "",
            HANDLER.as_bytes(),
        ),
        link("handler.sh", "lib/../lib/handler.sh"),
    ]));
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(deploy(&p, "inside", &hex).status, 202);
    assert_eq!(p.invoke("inside", "").text().unwrap().trim(), "LEAKED=");
}

#[test]
fn manifests_stored_before_the_upload_checks_still_cannot_reach_host_files() {
    let dir = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let (manifest, string) = host_secrets(host.path());
    let p = Platform::start(dir.path());
    let (hex, r) = p.upload_bundle(targz(&[
        (
            "virga-bundle.json",
            EntryType::Regular,
            0o644,
            "",
            MANIFEST.as_bytes(),
        ),
        (
            "handler.sh",
            EntryType::Regular,
            0o644,
            "",
            HANDLER.as_bytes(),
        ),
    ]));
    assert_eq!(r.status, 201, "{}", r.text);
    // What an older gateway accepted: the bundle's manifest replaced on disk.
    let at = dir
        .path()
        .join("bundles")
        .join(&hex)
        .join("virga-bundle.json");
    let replace = |with: &dyn Fn(&Path)| {
        fs::remove_file(&at).unwrap();
        with(&at);
    };
    let fifo = |p: &Path| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    };
    type Make<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Make)> = vec![
        (
            "root-only",
            Box::new(|p| std::os::unix::fs::symlink(&manifest, p).unwrap()),
        ),
        (
            "string link",
            Box::new(|p| std::os::unix::fs::symlink(&string, p).unwrap()),
        ),
        (
            "dev/zero",
            Box::new(|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap()),
        ),
        (
            "string file",
            Box::new(|p| fs::write(p, r#""host-secret-0815""#).unwrap()),
        ),
        ("fifo", Box::new(fifo)),
        (
            "huge",
            Box::new(|p| fs::File::create(p).unwrap().set_len(1 << 30).unwrap()),
        ),
    ];
    for (i, (what, make)) in cases.iter().enumerate() {
        replace(make.as_ref());
        let started = Instant::now();
        let r = deploy(&p, &format!("f{i}"), &hex);
        assert_eq!(r.status, 400, "{what}: {}", r.text);
        assert!(r.text.contains("virga-bundle.json"), "{what}: {}", r.text);
        assert!(!r.text.contains("host-secret"), "{what}: {}", r.text);
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        assert_eq!(
            p.anon(Method::GET, "/healthz").send().unwrap().status(),
            200
        );
    }
    assert!(p
        .get_json("/system/functions")
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn unpacked_bundles_keep_no_special_bits_and_stored_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let script = "echo to-the-log >&2; echo ok";
    let (hex, r) = p.upload_bundle(targz(&[
        (
            "virga-bundle.json",
            EntryType::Regular,
            0o666,
            "",
            MANIFEST.as_bytes(),
        ),
        (
            "handler.sh",
            EntryType::Regular,
            0o6777,
            "",
            script.as_bytes(),
        ),
        ("shared/", EntryType::Directory, 0o1777, "", b""),
        ("shared/data", EntryType::Regular, 0o2666, "", b"x"),
    ]));
    assert_eq!(r.status, 201, "{}", r.text);
    let bundles = dir.path().join("bundles");
    let tree = bundles.join(&hex);
    assert_eq!(mode(&tree.join("handler.sh")), 0o755);
    assert_eq!(mode(&tree.join("virga-bundle.json")), 0o644);
    assert_eq!(mode(&tree.join("shared")), 0o755);
    assert_eq!(mode(&tree.join("shared/data")), 0o644);
    assert_eq!(mode(&bundles), 0o700);
    assert_eq!(mode(&bundles.join(format!("{hex}.tar.gz"))), 0o600);

    assert_eq!(deploy(&p, "logger", &hex).status, 202);
    assert_eq!(p.invoke("logger", "").text().unwrap().trim(), "ok");
    let log = dir.path().join("logs/logger.log");
    assert!(
        p.eventually(Duration::from_secs(10), || fs::read_to_string(&log)
            .is_ok_and(|s| s.contains("to-the-log")))
    );
    assert_eq!(mode(&log), 0o600);
    assert_eq!(mode(&dir.path().join("logs")), 0o700);
}

/// Deflate `input` into `z`'s stream, ending with `flush`.
fn deflate(z: &mut Compress, input: &[u8], flush: FlushCompress) -> Vec<u8> {
    let mut out = Vec::new();
    let start = z.total_in();
    loop {
        out.reserve(64 << 10);
        let done = (z.total_in() - start) as usize;
        let status = z.compress_vec(&input[done..], &mut out, flush).unwrap();
        let consumed = (z.total_in() - start) as usize == input.len();
        let finishing = matches!(flush, FlushCompress::Finish);
        if status == flate2::Status::StreamEnd
            || (!finishing && consumed && out.len() < out.capacity())
        {
            return out;
        }
    }
}

/// A valid .tar.gz of one file of `size` zero bytes, built without compressing them all:
/// after a full flush deflate starts afresh, so every MiB of zeros compresses to the same
/// bytes, and the CRC of the whole is combined from the CRC of one MiB.
fn zeros_bomb(size: u64) -> Vec<u8> {
    const MIB: u64 = 1 << 20;
    let mut h = Header::new_gnu();
    h.set_path("bomb").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    // After the header: the data, its padding to a block, and two empty end blocks.
    let zeros = size + (512 - size % 512) % 512 + 1024;
    let (whole, rest) = (zeros / MIB, vec![0u8; (zeros % MIB) as usize]);
    let mib = vec![0u8; MIB as usize];
    let mut z = Compress::new(Compression::best(), false);
    let mut body = deflate(&mut z, h.as_bytes(), FlushCompress::Full);
    let unit = deflate(&mut z, &mib, FlushCompress::Full);
    assert_eq!(
        deflate(&mut z, &mib, FlushCompress::Full),
        unit,
        "a full flush starts afresh"
    );
    for _ in 0..whole {
        body.extend_from_slice(&unit);
    }
    body.extend(deflate(&mut z, &rest, FlushCompress::Finish));
    let (mut crc, mut one, mut last) = (Crc::new(), Crc::new(), Crc::new());
    crc.update(h.as_bytes());
    one.update(&mib);
    last.update(&rest);
    for _ in 0..whole {
        crc.combine(&one);
    }
    crc.combine(&last);
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    gz.extend(body);
    gz.write_all(&crc.sum().to_le_bytes()).unwrap();
    gz.write_all(&((512 + zeros) as u32).to_le_bytes()).unwrap();
    gz
}

#[test]
fn tar_bombs_are_refused_and_leave_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    // A 1 MiB upload that unpacks to just over the default 1 GiB.
    let bomb = zeros_bomb((1 << 30) + 1);
    assert!(bomb.len() < 4 << 20, "{}", bomb.len());
    let started = Instant::now();
    let (_, r) = p.upload_bundle(bomb);
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.text.contains("1073741824 bytes"), "{}", r.text);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(stored(dir.path()).is_empty(), "{:?}", stored(dir.path()));
    // Just within it is a bundle like any other (the bound is not a guess at compression).
    let (_, r) = p.upload_bundle(zeros_bomb(3 << 20));
    assert_eq!(r.status, 201, "{}", r.text);
    drop(p);

    // Smaller bounds from flags; a refused bundle's partial tree is removed too.
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_with(
        dir.path(),
        &[
            "--max-bundle-unpacked-bytes",
            "100000",
            "--max-bundle-entries",
            "50",
        ],
    );
    let data = vec![b'x'; 1000];
    let names: Vec<String> = (0..51).map(|i| format!("f{i}")).collect();
    let many: Vec<Entry> = names
        .iter()
        .map(|n| (n.as_str(), EntryType::Regular, 0o644, "", &data[..]))
        .collect();
    let (_, r) = p.upload_bundle(targz(&many));
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.text.contains("more than 50 entries"), "{}", r.text);
    let big = vec![b'y'; 60_000];
    let (_, r) = p.upload_bundle(targz(&[
        ("a", EntryType::Regular, 0o644, "", &big),
        ("b", EntryType::Regular, 0o644, "", &big),
    ]));
    assert_eq!(r.status, 413, "{}", r.text);
    assert!(r.text.contains("more than 100000 bytes"), "{}", r.text);
    assert!(stored(dir.path()).is_empty(), "{:?}", stored(dir.path()));
    let (_, r) = p.upload_bundle(targz(&many[..50]));
    assert_eq!(r.status, 201, "{}", r.text);
}
