//! Secrets are never in plain text at rest: the store seals them under a key kept outside
//! the data directory, the files instances read live on a tmpfs outside it, a store of an
//! older version is sealed at start, and a wrong key is refused. Every check runs the real
//! `virga up` and reads what it left on disk.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::json;
use virga_testkit::{script, virga_bin, Platform, PASSWORD};

/// A secret's value and every form in which it could be found on disk.
pub(crate) struct Needle {
    name: &'static str,
    forms: Vec<(&'static str, Vec<u8>)>,
}

impl Needle {
    pub(crate) fn new(name: &'static str, value: &[u8]) -> Needle {
        let b64 = base64::engine::general_purpose::STANDARD.encode(value);
        Needle {
            name,
            forms: vec![
                ("raw", value.to_vec()),
                ("JSON array", serde_json::to_vec(value).unwrap()),
                ("base64", b64.into_bytes()),
                ("hex", hex::encode(value).into_bytes()),
            ],
        }
    }
}

/// A fresh random value starting with `prefix`.
fn random(prefix: &[u8]) -> Vec<u8> {
    [prefix, &rand::random::<[u8; 16]>()].concat()
}

/// A fresh random text starting with `prefix`.
fn random_text(prefix: &str) -> Vec<u8> {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 16]>())).into_bytes()
}

/// Mount points and their file system types, from `/proc/self/mountinfo`.
fn mounts() -> Vec<(PathBuf, String)> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some((PathBuf::from(point), fstype.to_string()))
        })
        .collect()
}

/// Every regular file under `dir` on its own file system, mount points (the sandboxes'
/// read-only views of the tmpfs) left out, and the needles found in each.
pub(crate) fn scan(dir: &Path, needles: &[&Needle]) -> Vec<String> {
    let dir = std::fs::canonicalize(dir).unwrap();
    let points: Vec<PathBuf> = mounts().into_iter().map(|(p, _)| p).collect();
    let dev = std::fs::metadata(&dir).unwrap().dev();
    let mut found = Vec::new();
    let mut files = 0;
    let mut todo = vec![dir.clone()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.dev() != dev || points.contains(&path) {
                continue;
            }
            if meta.is_dir() {
                todo.push(path);
            } else if meta.is_file() {
                files += 1;
                found.extend(scan_file(&path, needles));
            }
        }
    }
    assert!(files > 3, "scanned only {files} files in {}", dir.display());
    found
}

fn scan_file(path: &Path, needles: &[&Needle]) -> Vec<String> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for n in needles {
        for (form, needle) in &n.forms {
            if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                found.push(format!("{} ({form}) in {}", n.name, path.display()));
            }
        }
    }
    found
}

/// The mount that holds `path`: the longest mount point it is under.
fn mount_of(path: &Path) -> (PathBuf, String) {
    mounts()
        .into_iter()
        .filter(|(p, _)| path.starts_with(p))
        .max_by_key(|(p, _)| p.as_os_str().len())
        .unwrap()
}

/// Check that the secrets directory `secrets` is on a tmpfs of the platform's own outside
/// `data`, and return that tmpfs's mount point.
fn check_tmpfs(secrets: &Path, data: &Path) -> PathBuf {
    let data = std::fs::canonicalize(data).unwrap();
    assert!(
        !secrets.starts_with(&data),
        "{} is in the data directory",
        secrets.display()
    );
    let (point, fstype) = mount_of(secrets);
    assert_eq!(fstype, "tmpfs", "{} is on {point:?}", secrets.display());
    assert!(
        !point.starts_with(&data) && !data.starts_with(&point),
        "{point:?}"
    );
    let shown = point.to_string_lossy();
    assert!(shown.starts_with("/run/virga-secrets-"), "{shown}");
    let c = std::ffi::CString::new(secrets.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statfs fills the zeroed struct we pass; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
    assert_eq!(
        st.f_type as i64, 0x0102_1994,
        "statfs says it is not a tmpfs"
    );
    let mode = std::fs::metadata(&point).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "{point:?}");
    point
}

fn mounted(point: &Path) -> usize {
    mounts().iter().filter(|(p, _)| p == point).count()
}

/// Secrets directories as two other platforms left them: one whose process is gone and one
/// whose process (this test) still runs.
fn leftovers_of_other_platforms() -> (PathBuf, PathBuf) {
    let start = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let (_, rest) = stat.rsplit_once(')').unwrap();
        rest.split_whitespace().nth(19).unwrap().to_string()
    };
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let dead = (child.id(), start(child.id()));
    child.kill().unwrap();
    child.wait().unwrap();
    let me = (std::process::id(), start(std::process::id()));
    let tag = hex::encode(rand::random::<[u8; 6]>());
    let dirs = [("gone", dead), ("alive", me)].map(|(what, (pid, start))| {
        let dir = PathBuf::from(format!("/run/virga-secrets-test-{what}-{tag}"));
        std::fs::create_dir_all(dir.join("1-f")).unwrap();
        std::fs::write(dir.join("s"), "x").unwrap();
        std::fs::write(dir.join(".owner"), format!("{pid} {start}\n")).unwrap();
        dir
    });
    let [gone, alive] = dirs;
    (gone, alive)
}

/// Create the secrets `plain` (a value) and `raw` (a rawValue of bytes that are not text).
fn create_secrets(p: &Platform, plain: &[u8], raw: &[u8]) {
    p.create_secret("plain", std::str::from_utf8(plain).unwrap());
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let r = p.send_json(
        Method::POST,
        "/system/secrets",
        json!({"name": "raw", "rawValue": b64}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
}

/// What the reader function prints: the secrets `plain` and `raw` (in hex) in `dir`.
fn reader(dir: &str) -> String {
    format!(
        "cat \"{dir}/plain\"; echo; od -An -tx1 -v \"{dir}/raw\" | tr -d ' \\n'; echo; echo \"{dir}\""
    )
}

/// Call `name` and split its answer into the plain secret, the raw one, and the directory.
fn read_secrets(p: &Platform, name: &str) -> (Vec<u8>, Vec<u8>, PathBuf) {
    let r = p.invoke(name, "");
    let status = r.status();
    let out = r.text().unwrap();
    assert_eq!(status, 200, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let raw = hex::decode(lines[1]).unwrap();
    (lines[0].as_bytes().to_vec(), raw, PathBuf::from(lines[2]))
}

#[test]
fn secrets_are_sealed_at_rest_and_instances_read_them_from_a_tmpfs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("platform.log");
    let (plain, raw) = (random_text("plain-"), random(&[0, 0xff, 0x7f]));
    let (np, nr) = (Needle::new("plain", &plain), Needle::new("raw", &raw));
    let (gone, alive) = leftovers_of_other_platforms();
    // The platform's own logs at their most talkative, to see no value goes there either.
    let envs = [("VIRGA_LOG", "trace")];
    let mut p = Platform::start_env(&data, &[], &envs, Some(&log));
    assert!(!gone.exists(), "{gone:?}: its platform is gone");
    assert!(alive.join("s").exists(), "{alive:?}: its platform runs");
    std::fs::remove_dir_all(&alive).unwrap();
    create_secrets(&p, &plain, &raw);
    let show = script(tmp.path(), "show.sh", &reader("$secret_mount_path"));
    p.deploy_process("reader", &show, json!({"secrets": ["plain", "raw"]}));
    let (got_plain, got_raw, dir) = read_secrets(&p, "reader");
    assert_eq!((got_plain, got_raw), (plain.clone(), raw.clone()));

    let found = scan(&data, &[&np, &nr]);
    assert!(found.is_empty(), "secret values at rest: {found:#?}");
    // The instance's files: 0600 in a 0700 directory on a tmpfs outside the data directory.
    let point = check_tmpfs(&dir, &data);
    for name in ["plain", "raw"] {
        let mode = std::fs::metadata(dir.join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }

    // A clean stop takes the tmpfs away; a start with the key reads the secrets again.
    assert!(p.terminate().success());
    assert_eq!(mounted(&point), 0, "{point:?} still mounted");
    assert!(!point.exists(), "{point:?} left behind");
    p.restart();
    let (got_plain, got_raw, dir) = read_secrets(&p, "reader");
    assert_eq!((got_plain, got_raw), (plain.clone(), raw.clone()));
    assert_eq!(check_tmpfs(&dir, &data), point);

    // After a crash the next start clears what the last run left.
    p.kill9();
    assert_eq!(mounted(&point), 1, "the crashed run's tmpfs");
    std::fs::write(point.join("left-by-the-crash"), "x").unwrap();
    p.restart();
    assert_eq!(read_secrets(&p, "reader").0, plain);
    assert_eq!(
        mounted(&point),
        1,
        "one tmpfs at {point:?}, not one per run"
    );
    assert!(!point.join("left-by-the-crash").exists());
    drop(p);

    let found = scan(&data, &[&np, &nr]);
    assert!(found.is_empty(), "secret values at rest: {found:#?}");
    let logged = scan_file(&log, &[&np, &nr]);
    assert!(logged.is_empty(), "secret values logged: {logged:#?}");
    assert!(std::fs::metadata(&log).unwrap().len() > 0);
}

#[test]
fn sandboxed_instances_read_sealed_secrets_from_the_tmpfs_as_their_own_user() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (plain, raw) = (random_text("sandboxed-"), random(&[0xfe, 0]));
    let (np, nr) = (Needle::new("plain", &plain), Needle::new("raw", &raw));
    let mut p = Platform::start_runc(&data, &["--warm-pool", "0"]);
    create_secrets(&p, &plain, &raw);
    p.deploy_script(
        "reader",
        &reader("/var/openfaas/secrets"),
        json!({"secrets": ["plain", "raw"]}),
    );
    let (got_plain, got_raw, _) = read_secrets(&p, "reader");
    assert_eq!((got_plain, got_raw), (plain.clone(), raw.clone()));
    let found = scan(&data, &[&np, &nr]);
    assert!(found.is_empty(), "secret values at rest: {found:#?}");

    // The host side of the sandbox's secrets: the one tmpfs file holding this value.
    let files: Vec<PathBuf> = std::fs::read_dir("/run")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("virga-secrets-")
        })
        .flat_map(|e| std::fs::read_dir(e.path()).into_iter().flatten().flatten())
        .map(|e| e.path().join("plain"))
        .filter(|f| std::fs::read(f).is_ok_and(|v| v == plain))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let dir = files[0].parent().unwrap();
    let point = check_tmpfs(dir, &data);
    for f in [dir.join("plain"), dir.join("raw"), dir.to_path_buf()] {
        let meta = std::fs::metadata(&f).unwrap();
        assert_eq!(meta.uid(), 12000, "{f:?} belongs to the sandbox user");
        let want = if f == dir { 0o700 } else { 0o600 };
        assert_eq!(meta.permissions().mode() & 0o777, want, "{f:?}");
    }
    assert!(p.terminate().success());
    assert_eq!(mounted(&point), 0, "{point:?} still mounted");
    assert!(!point.exists());
}

/// Start `virga up` on `data` with `envs` and wait for it to give up: its exit code and
/// what it said, or `None` if it came up (it is then stopped).
fn start_refused(data: &Path, envs: &[(&str, &str)]) -> Option<(i32, String)> {
    let mut child = Command::new(virga_bin())
        .args(["up", "--listen", "127.0.0.1:0", "--isolation", "process"])
        .arg("--data-dir")
        .arg(data)
        .env("VIRGA_ADMIN_PASSWORD", PASSWORD)
        .envs(envs.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return Some((status.code().unwrap_or(-1), err));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_wrong_or_missing_key_is_refused_and_the_secrets_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let key = hex::encode(rand::random::<[u8; 32]>());
    let other = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let plain = b"kept-under-the-right-key-9f3a".to_vec();
    let mut p = Platform::start_env(&data, &[], &[("VIRGA_SECRETS_KEY", &key)], None);
    p.create_secret("plain", std::str::from_utf8(&plain).unwrap());
    let show = script(tmp.path(), "show.sh", "cat \"$secret_mount_path/plain\"");
    p.deploy_process("reader", &show, json!({"secrets": ["plain"]}));
    assert_eq!(p.invoke("reader", "").text().unwrap().as_bytes(), plain);
    assert!(p.terminate().success());

    let (code, err) = start_refused(&data, &[("VIRGA_SECRETS_KEY", &other)])
        .expect("virga up started with another key");
    assert_ne!(code, 0);
    assert!(err.contains("sealed with another key"), "{err}");
    assert!(err.contains("set VIRGA_SECRETS_KEY to the key"), "{err}");
    assert!(
        !err.contains(&key) && !err.contains(&other),
        "the key in: {err}"
    );

    // No key given and no key file yet: one is made, and it is not the secrets' key.
    let key_file = tmp.path().join("keys/secrets.key");
    let file = key_file.to_str().unwrap();
    let (code, err) = start_refused(&data, &[("VIRGA_SECRETS_KEY_FILE", file)])
        .expect("virga up started with a new key file");
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("the key file {file} did not exist")),
        "{err}"
    );
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let made = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(made.trim().len(), 64, "hex of 32 bytes");
    let (_, err) = start_refused(&data, &[("VIRGA_SECRETS_KEY_FILE", file)]).unwrap();
    assert!(
        err.contains(&format!("the key file {file} holds another key")),
        "{err}"
    );

    for bad in ["00ff", "not a key at all", &"zz".repeat(32)] {
        let (code, err) = start_refused(&data, &[("VIRGA_SECRETS_KEY", bad)])
            .unwrap_or_else(|| panic!("virga up started with VIRGA_SECRETS_KEY={bad}"));
        assert_ne!(code, 0);
        assert!(err.contains("VIRGA_SECRETS_KEY is not usable"), "{err}");
        assert!(!err.contains(bad), "the key in: {err}");
    }

    // Nothing was lost: the right key reads the secret; the key is nowhere in the data.
    p.restart();
    assert_eq!(p.invoke("reader", "").text().unwrap().as_bytes(), plain);
    drop(p);
    let key_needle = Needle::new("key", &hex::decode(&key).unwrap());
    let made_needle = Needle::new("made key", &hex::decode(made.trim()).unwrap());
    let needle = Needle::new("plain", &plain);
    let found = scan(&data, &[&key_needle, &made_needle, &needle]);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn plain_secrets_of_an_older_version_are_sealed_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let show = script(tmp.path(), "show.sh", "cat \"$secret_mount_path/s\"");
    let first = b"first-value-of-the-old-store-51c2".to_vec();
    let second = b"second-value-of-the-old-store-e7a0".to_vec();
    {
        // The layout the previous version wrote: JSON functions, JSON byte-array secrets,
        // and a secret that was updated once (its old page is free, not gone).
        let functions: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("functions");
        let secrets: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("secrets");
        let db = redb::Database::create(data.join("state.redb")).unwrap();
        let f = json!({
            "deployment": {"service": "reader", "image": "", "envProcess": show,
                           "namespace": "openfaas-fn", "secrets": ["s"]},
            "created_at": "2024-05-01T12:00:00Z",
            "replicas": 1,
        });
        for value in [&first, &second] {
            let tx = db.begin_write().unwrap();
            let f = serde_json::to_vec(&f).unwrap();
            tx.open_table(functions)
                .unwrap()
                .insert("reader", f.as_slice())
                .unwrap();
            let v = serde_json::to_vec(value).unwrap();
            tx.open_table(secrets)
                .unwrap()
                .insert("s", v.as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
    }
    let old = [Needle::new("first", &first), Needle::new("second", &second)];
    let before = scan_file(&data.join("state.redb"), &[&old[0], &old[1]]);
    assert!(
        before.iter().any(|f| f.starts_with("second (JSON array)")),
        "the old store holds its value in plain: {before:?}"
    );

    let mut p = Platform::start(&data);
    assert_eq!(p.invoke("reader", "").text().unwrap().as_bytes(), second);
    let list = p.get_json("/system/secrets");
    assert_eq!(list, json!([{"name": "s", "namespace": "openfaas-fn"}]));
    let found = scan(&data, &[&old[0], &old[1]]);
    assert!(
        found.is_empty(),
        "plain values after the migration: {found:#?}"
    );
    assert!(p.terminate().success());
    p.restart();
    assert_eq!(p.invoke("reader", "").text().unwrap().as_bytes(), second);
}

/// A child process killed when the test ends, also when it fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn without_root_the_key_is_in_the_config_dir_and_the_files_on_dev_shm() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let data = tmp.path().join("data");
    std::fs::create_dir(&home).unwrap();
    let show = script(tmp.path(), "show.sh", &reader("$secret_mount_path"));
    for p in [tmp.path(), &home, Path::new(&show)] {
        std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
    }
    let mut child = KillOnDrop(
        Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "env",
                "-i",
            ])
            .arg(format!("HOME={}", home.display()))
            .arg(format!("VIRGA_ADMIN_PASSWORD={PASSWORD}"))
            .arg("VIRGA_LOG=warn")
            .arg(virga_bin())
            .args(["up", "--listen", "127.0.0.1:0", "--isolation", "process"])
            .args(["--warm-pool", "0", "--data-dir"])
            .arg(&data)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = std::io::BufReader::new(child.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .strip_prefix("Virga gateway listening on ")
        .unwrap()
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    let http = reqwest::blocking::Client::new();
    let sys = |path: &str, body: serde_json::Value| {
        let r = http
            .post(format!("{url}{path}"))
            .basic_auth("admin", Some(PASSWORD));
        r.json(&body).send().unwrap().status().as_u16()
    };
    let plain = random_text("unprivileged-");
    let value = String::from_utf8(plain.clone()).unwrap();
    assert_eq!(
        sys("/system/secrets", json!({"name": "plain", "value": value})),
        201
    );
    assert_eq!(
        sys(
            "/system/secrets",
            json!({"name": "raw", "rawValue": "AAE="})
        ),
        201
    );
    let f = json!({"service": "reader", "envProcess": show, "secrets": ["plain", "raw"]});
    assert_eq!(sys("/system/functions", f), 202);
    let out = http
        .post(format!("{url}/function/reader"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..2], [value.as_str(), "0001"], "{out}");
    let dir = PathBuf::from(lines[2]);
    let root = dir.parent().unwrap().to_path_buf();
    assert!(
        root.to_string_lossy()
            .starts_with("/dev/shm/virga-secrets-"),
        "{out}"
    );
    assert_eq!(mount_of(&dir).1, "tmpfs");
    let meta = std::fs::metadata(&root).unwrap();
    assert_eq!(
        (meta.uid(), meta.permissions().mode() & 0o777),
        (65534, 0o700)
    );
    let key = std::fs::metadata(home.join(".config/virga/secrets.key")).unwrap();
    assert_eq!(
        (key.uid(), key.permissions().mode() & 0o777),
        (65534, 0o600)
    );
    let found = scan(&data, &[&Needle::new("plain", &plain)]);
    assert!(found.is_empty(), "secret values at rest: {found:#?}");

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    assert!(child.0.wait().unwrap().success());
    assert!(!root.exists(), "{root:?} left behind");
}
