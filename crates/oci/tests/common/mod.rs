//! Test harness: a real registry (Debian's docker-registry) on a free loopback port with a
//! temporary storage directory, with or without htpasswd auth; skopeo to cross-check; and
//! hand-made layers.
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest as _;
use virga_oci::{Credentials, Digest, Images, Options};

/// A running docker-registry, stopped when dropped.
pub struct Registry {
    pub host: String,
    pub dir: tempfile::TempDir,
    pub creds: Option<Credentials>,
    child: Child,
}

impl Registry {
    /// A registry without auth.
    pub fn start() -> Registry {
        Self::start_with(None)
    }

    /// A registry that wants `user`/`password` (htpasswd, bcrypt) for everything.
    pub fn with_auth(user: &str, password: &str) -> Registry {
        Self::start_with(Some(Credentials {
            username: user.into(),
            password: password.into(),
        }))
    }

    fn start_with(creds: Option<Credentials>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        // The port is free when asked for; if another process takes it before the registry
        // binds, the registry exits and we try another.
        for _ in 0..20 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut auth = String::new();
            if let Some(c) = &creds {
                let hash = bcrypt::hash(&c.password, 4).unwrap();
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{}:{hash}\n", c.username)).unwrap();
                auth = format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    htpasswd.display()
                );
            }
            let config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                dir.path().join("storage").display()
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("docker-registry (scripts/setup --test installs it)");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Registry {
                        host: format!("127.0.0.1:{port}"),
                        dir,
                        creds,
                        child,
                    };
                }
                if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        panic!("docker-registry did not start");
    }

    /// `host:port/name`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }

    /// Where the registry keeps blob `d`.
    pub fn blob_file(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// PUT a manifest as it is (for what the crate does not make, such as an index).
    pub fn put_manifest(&self, repo_tag: &str, media_type: &str, body: &[u8]) {
        // reqwest's blocking client may not run on an async test's thread.
        std::thread::scope(|s| {
            s.spawn(|| self.put_manifest_now(repo_tag, media_type, body))
                .join()
                .unwrap()
        });
    }

    fn put_manifest_now(&self, repo_tag: &str, media_type: &str, body: &[u8]) {
        let (repo, tag) = repo_tag.split_once(':').unwrap();
        let url = format!("http://{}/v2/{repo}/manifests/{tag}", self.host);
        let mut req = reqwest::blocking::Client::new()
            .put(url)
            .header("Content-Type", media_type)
            .body(body.to_vec());
        if let Some(c) = &self.creds {
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req.send().unwrap();
        assert!(resp.status().is_success(), "{:?}", resp.text());
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run skopeo against the loopback registry (plain HTTP) and return its stdout.
pub fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo (scripts/setup --test installs it)");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `skopeo inspect` of `image` as JSON.
pub fn inspect(image: &str, extra: &[&str]) -> serde_json::Value {
    let target = format!("docker://{image}");
    let mut args = vec!["inspect", "--tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(&target);
    serde_json::from_str(&skopeo(&args)).unwrap()
}

/// The digest skopeo computes for the raw manifest `image` names.
pub fn raw_digest(image: &str, extra: &[&str]) -> String {
    let target = format!("docker://{image}");
    let mut args = vec!["inspect", "--raw", "--tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(&target);
    let raw = skopeo(&args);
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(raw.as_bytes()))
    )
}

/// A fresh image store in its own temporary directory.
pub fn store() -> (tempfile::TempDir, Images) {
    store_with(Options::default())
}

/// A fresh image store with `opts`.
pub fn store_with(opts: Options) -> (tempfile::TempDir, Images) {
    let dir = tempfile::tempdir().unwrap();
    let images = Images::open(&dir.path().join("images"), opts).unwrap();
    (dir, images)
}

/// One entry of a hand-made layer.
pub enum Entry<'a> {
    File(&'a str, u32, &'a [u8]),
    Dir(&'a str, u32),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    Char(&'a str, u32, u32),
    Fifo(&'a str),
}

/// A gzip'd tar of `entries`, exactly as given (paths are not checked or cleaned).
pub fn layer(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        h.set_uid(0);
        h.set_gid(0);
        let (path, link): (&str, Option<&str>) = match e {
            Entry::File(p, mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                (p, None)
            }
            Entry::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                (p, None)
            }
            Entry::Symlink(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                (p, Some(t))
            }
            Entry::HardLink(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                (p, Some(t))
            }
            Entry::Char(p, maj, min) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_device_major(*maj).unwrap();
                h.set_device_minor(*min).unwrap();
                (p, None)
            }
            Entry::Fifo(p) => {
                h.set_entry_type(tar::EntryType::Fifo);
                h.set_mode(0o644);
                (p, None)
            }
        };
        // Write the raw name bytes, so absolute and `..` paths survive as they are.
        let name = h.as_old_mut();
        name.name = [0; 100];
        name.name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(t) = link {
            name.linkname = [0; 100];
            name.linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_cksum();
        let data: &[u8] = match e {
            Entry::File(_, _, d) => d,
            _ => &[],
        };
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// Files under `root` (relative paths, sorted), to show nothing was left behind.
pub fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Read a whole file.
pub fn read(p: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(p).unwrap().read_to_end(&mut v).unwrap();
    v
}
