//! A real registry for the image tests (Debian's docker-registry on a free loopback port,
//! with or without htpasswd auth), and images built and pushed with virga-oci's own build
//! API: busybox trees, a busybox httpd image (no Virga component inside), a Lambda container
//! image (an AWS-style entrypoint running a Rust Lambda runtime).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virga_oci::{Credentials, Digest, ImageSpec, Images, Options, Platform, RunConfig};

/// A running docker-registry, stopped when dropped.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Its storage, removed with it.
    _dir: tempfile::TempDir,
    child: Child,
}

impl Registry {
    /// A registry that wants `creds` (htpasswd, bcrypt) for everything, if given.
    pub fn start(creds: Option<Credentials>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
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
        // A port free when asked for may be taken before the registry binds: try another.
        for _ in 0..20 {
            let port = crate::free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
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
            while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Registry {
                        host: format!("127.0.0.1:{port}"),
                        _dir: dir,
                        child,
                    };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("docker-registry did not start");
    }

    /// `host:port/name`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.host)
    }

    /// Stop it (a registry that is down).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A tree with the static busybox: `/bin/sh -> /bin/busybox`, its applets, /www, and an
/// /etc/passwd naming user `app` (uid 1234).
pub fn busybox_tree(dir: &Path, page: &str) {
    for d in ["bin", "www", "etc", "srv/work", "var/data"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "httpd", "cat", "id", "pwd", "touch", "echo", "ls"] {
        std::os::unix::fs::symlink("/bin/busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("www/index.html"), page).unwrap();
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\napp:x:1234:1234:app:/srv:/bin/sh\n",
    )
    .unwrap();
}

/// The host's virga-watchdog and the libraries it links, as a layer tree.
pub fn watchdog_tree(dir: &Path) {
    binary_tree(dir, &crate::watchdog_bin(), "usr/bin/fwatchdog");
}

/// The host's binary `bin` at `dir/at` and the libraries it links (with the loader) at
/// their host paths under `dir`, as a layer tree: it runs on a base without libraries.
pub fn binary_tree(dir: &Path, bin: &Path, at: &str) {
    let to = dir.join(at);
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    std::fs::copy(bin, to).unwrap();
    let out = Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(path) = line.split_whitespace().find(|w| w.starts_with('/')) else {
            continue;
        };
        let real = std::fs::canonicalize(path).unwrap();
        let at = dir.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(at.parent().unwrap()).unwrap();
        std::fs::copy(real, at).unwrap();
    }
}

/// The entrypoint of a Lambda container image, like AWS's: the handler (`Cmd`) becomes
/// `_HANDLER`, and the runtime's bootstrap runs only under a Runtime API.
const LAMBDA_ENTRYPOINT: &str = r#"#!/bin/sh
if [ $# -ne 1 ]; then
  echo "lambda-entrypoint.sh: expected the handler name as the only argument" >&2
  exit 142
fi
export _HANDLER="$1"
if [ -z "$AWS_LAMBDA_RUNTIME_API" ]; then
  echo "lambda-entrypoint.sh: AWS_LAMBDA_RUNTIME_API is not set: this image runs under a Lambda Runtime API (no emulator inside)" >&2
  exit 1
fi
exec /var/runtime/bootstrap
"#;

/// A Lambda container image's own layer: `/lambda-entrypoint.sh`, the Rust fixture
/// `virga-lambda-fixture` as `/var/runtime/bootstrap` with its libraries, an empty
/// `/var/task`.
pub fn lambda_tree(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let entry = dir.join("lambda-entrypoint.sh");
    std::fs::write(&entry, LAMBDA_ENTRYPOINT).unwrap();
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(dir.join("var/task")).unwrap();
    binary_tree(dir, &crate::lambda_fixture_bin(), "var/runtime/bootstrap");
}

/// How a Lambda container image starts, as AWS's base images: `/lambda-entrypoint.sh` with
/// the handler `app.handler`, `Env` with `LAMBDA_TASK_ROOT` (and `LAMBDA_RUNTIME_DIR`, which
/// AWS's images set too, if `aws`), as user `user` (none: root) in `/var/task`.
pub fn lambda_config(aws: bool, user: Option<&str>) -> RunConfig {
    let mut env = vec![
        "PATH=/bin:/usr/bin".to_string(),
        "LAMBDA_TASK_ROOT=/var/task".into(),
    ];
    if aws {
        env.push("LAMBDA_RUNTIME_DIR=/var/runtime".into());
    }
    RunConfig {
        entrypoint: Some(vec!["/lambda-entrypoint.sh".into()]),
        cmd: Some(vec!["app.handler".into()]),
        env,
        user: user.map(String::from),
        working_dir: Some("/var/task".into()),
        ..RunConfig::default()
    }
}

/// Push a Lambda container image (a busybox layer and [`lambda_tree`], started as
/// [`lambda_config`] says) as `target`; its digest.
pub fn push_lambda(reg: &Registry, target: &str, config: RunConfig) -> String {
    let (base, lambda) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    busybox_tree(base.path(), "");
    lambda_tree(lambda.path());
    push(
        &[base.path(), lambda.path()],
        config,
        Platform::host(),
        &reg.image(target),
        None,
    )
    .to_string()
}

/// Build an image of one layer per tree in `trees` with `config` for `platform`, and push
/// it as `target` (with `creds`); its digest.
pub fn push(
    trees: &[&Path],
    config: RunConfig,
    platform: Platform,
    target: &str,
    creds: Option<&Credentials>,
) -> Digest {
    let dir = tempfile::tempdir().unwrap();
    let images = Images::open(
        dir.path(),
        Options {
            platform,
            ..Options::default()
        },
    )
    .unwrap();
    let layers = trees
        .iter()
        .map(|t| images.build_layer(t, "").unwrap())
        .collect();
    let digest = images
        .build_image(&ImageSpec {
            layers,
            config,
            ..ImageSpec::default()
        })
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(images.push(&digest, target, creds, None))
        .unwrap();
    digest
}

/// How the busybox httpd image starts: serving `/www` on 8080.
pub fn httpd() -> RunConfig {
    RunConfig {
        entrypoint: Some(
            ["/bin/httpd", "-f", "-v", "-p", "8080", "-h", "/www"]
                .map(String::from)
                .to_vec(),
        ),
        env: vec!["PATH=/bin".into()],
        ..RunConfig::default()
    }
}

/// Push the busybox httpd image serving `page` as `target`; its digest.
pub fn push_httpd(reg: &Registry, target: &str, page: &str, creds: Option<&Credentials>) -> String {
    let tree = tempfile::tempdir().unwrap();
    busybox_tree(tree.path(), page);
    push(
        &[tree.path()],
        httpd(),
        Platform::host(),
        &reg.image(target),
        creds,
    )
    .to_string()
}
