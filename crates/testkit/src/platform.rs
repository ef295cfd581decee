//! The real `virga up` on an ephemeral port with a given data directory, talked to over real
//! HTTP. The process is stopped when the guard drops.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder, Response};

use crate::bins::virga_bin;
use crate::bundle::{file, targz, Entry};

/// Password every test platform uses.
pub const PASSWORD: &str = "test-password";

/// Status and text of an answer.
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// Body text.
    pub text: String,
}

/// A running `virga up`.
pub struct Platform {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The console's own origin, `http://127.0.0.1:PORT` (`None` with `--console-listen off`).
    pub console_url: Option<String>,
    /// The data directory (kept across restarts of the same test).
    pub data_dir: PathBuf,
    /// HTTP client.
    pub http: Client,
    extra_args: Vec<String>,
    /// RLIMIT_NOFILE (soft, hard) of the platform's process, if limited.
    nofile: Option<(u64, u64)>,
    /// Extra environment variables of the platform's process.
    envs: Vec<(String, String)>,
    /// File the platform's stderr is appended to (inherited when `None`).
    stderr: Option<PathBuf>,
}

impl Platform {
    /// Start a platform on a fresh temporary data directory.
    pub fn start(data_dir: &Path) -> Platform {
        Platform::start_with(data_dir, &[])
    }

    /// Start with extra `virga up` arguments.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Platform {
        Platform::start_limited(data_dir, extra, None)
    }

    /// Start with extra arguments and, if given, the open-file limit `nofile` (soft, hard).
    pub fn start_limited(data_dir: &Path, extra: &[&str], nofile: Option<(u64, u64)>) -> Platform {
        let mut p = Platform::new(data_dir, extra, nofile);
        p.launch();
        p
    }

    /// Start with extra `virga up` arguments and environment variables.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Platform {
        Platform::start_env(data_dir, extra, envs, None)
    }

    /// Start with extra arguments, environment variables `envs`, and stderr appended to
    /// the file `stderr` if given.
    pub fn start_env(
        data_dir: &Path,
        extra: &[&str],
        envs: &[(&str, &str)],
        stderr: Option<&Path>,
    ) -> Platform {
        let mut p = Platform::new(data_dir, extra, None);
        p.envs = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p.stderr = stderr.map(Path::to_path_buf);
        p.launch();
        p
    }

    fn new(data_dir: &Path, extra: &[&str], nofile: Option<(u64, u64)>) -> Platform {
        Platform {
            child: None,
            url: String::new(),
            console_url: None,
            data_dir: data_dir.to_path_buf(),
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            nofile,
            envs: Vec::new(),
            stderr: None,
        }
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(virga_bin());
        cmd.args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.data_dir)
            .args(self.isolation_args())
            .args(&self.extra_args)
            .env("VIRGA_ADMIN_PASSWORD", PASSWORD)
            .env("VIRGA_LOG", "warn")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(match &self.stderr {
                Some(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .unwrap()
                    .into(),
                None => Stdio::inherit(),
            });
        if let Some((soft, hard)) = self.nofile {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: only setrlimit, async-signal-safe, runs between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("start virga up");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("virga up printed nothing").unwrap();
        let url = first
            .strip_prefix("Virga gateway listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .trim()
            .to_string();
        let second = lines.next().expect("virga up printed one line").unwrap();
        self.console_url = second
            .strip_prefix("  console: ")
            .and_then(|c| c.split_once("/ui/"))
            .map(|(base, _)| base.to_string());
        // Keep draining stdout so the platform never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.url = url;
        self.child = Some(child);
    }

    /// Plain processes unless the test asks for an isolation itself: most tests are about
    /// the API, and their helper scripts live on the host. Sandbox tests pass `--isolation runc`.
    fn isolation_args(&self) -> Vec<&'static str> {
        if self.extra_args.iter().any(|a| a == "--isolation") {
            Vec::new()
        } else {
            vec!["--isolation", "process"]
        }
    }

    /// Upload a bundle of `files` whose watchdog runs `fprocess` per request (classic mode)
    /// and deploy it as `name` with the extra FunctionDeployment fields in `extra`.
    pub fn deploy_bundle(
        &self,
        name: &str,
        files: &[(&str, &str)],
        fprocess: &str,
        extra: serde_json::Value,
    ) {
        let manifest = serde_json::json!({
            "lang": "test",
            "env": {"fprocess": fprocess, "mode": "serializing"}
        })
        .to_string();
        let mut all: Vec<Entry> = files.iter().map(|(path, body)| file(path, body)).collect();
        all.push(file("virga-bundle.json", &manifest));
        let (hex, r) = self.upload_bundle(targz(&all));
        assert_eq!(r.status, 201, "upload: {}", r.text);
        let base = serde_json::json!({
            "service": name,
            "image": format!("virga.local/{name}@sha256:{hex}"),
        });
        self.deploy(base, extra);
    }

    /// PUT `bytes` as a bundle under its digest; the digest (hex) and the answer.
    pub fn upload_bundle(&self, bytes: Vec<u8>) -> (String, Answer) {
        use sha2::Digest;
        let hex = hex::encode(sha2::Sha256::digest(&bytes));
        let r = self
            .sys(
                reqwest::Method::PUT,
                &format!("/system/virga/bundles/sha256:{hex}"),
            )
            .body(bytes)
            .send()
            .unwrap();
        let answer = Answer {
            status: r.status().as_u16(),
            text: r.text().unwrap(),
        };
        (hex, answer)
    }

    /// POST the deployment `base` with the fields of `extra` added; asserts 202.
    fn deploy(&self, mut body: serde_json::Value, extra: serde_json::Value) {
        if let serde_json::Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        let r = self
            .sys(reqwest::Method::POST, "/system/functions")
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 202, "deploy {body}: {}", r.text().unwrap());
    }

    /// Deploy a shell script as a classic function (`sh handler.sh` per request).
    pub fn deploy_script(&self, name: &str, body: &str, extra: serde_json::Value) {
        self.deploy_bundle(name, &[("handler.sh", body)], "sh handler.sh", extra);
    }

    /// The platform's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9 the platform (its instances die with it).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the platform and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("platform running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap()
    }

    /// Start again on the same data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the platform first");
        self.launch();
    }

    /// A request to the gateway with admin credentials.
    pub fn sys(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .basic_auth("admin", Some(PASSWORD))
    }

    /// A request without credentials.
    pub fn anon(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }

    /// Deploy a function with `envProcess`; asserts 202.
    pub fn deploy_process(&self, name: &str, process: &str, extra: serde_json::Value) {
        self.deploy(
            serde_json::json!({"service": name, "image": "", "envProcess": process}),
            extra,
        );
    }

    /// Send `body` as JSON to the /system route `path`; the status and the answer's text.
    pub fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: serde_json::Value,
    ) -> Answer {
        let r = self.sys(method, path).json(&body).send().unwrap();
        Answer {
            status: r.status().as_u16(),
            text: r.text().unwrap(),
        }
    }

    /// GET the /system route `path` as JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        self.sys(reqwest::Method::GET, path)
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// Start with runc sandboxes, checking /system/info says so.
    pub fn start_runc(data_dir: &Path, extra: &[&str]) -> Platform {
        let mut args = vec!["--isolation", "runc"];
        args.extend_from_slice(extra);
        let p = Platform::start_with(data_dir, &args);
        assert_eq!(p.get_json("/system/info")["provider"]["isolation"], "runc");
        p
    }

    /// Create secret `name` with `value`; asserts 201.
    pub fn create_secret(&self, name: &str, value: &str) {
        self.create_secret_in(name, value, "");
    }

    /// Create secret `name` with `value` in namespace `ns`; asserts 201.
    pub fn create_secret_in(&self, name: &str, value: &str, ns: &str) {
        let r = self
            .sys(reqwest::Method::POST, "/system/secrets")
            .json(&serde_json::json!({"name": name, "value": value, "namespace": ns}))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "secret {name}: {}", r.text().unwrap());
    }

    /// POST `body` to `/function/{name}`.
    pub fn invoke(&self, name: &str, body: &str) -> Response {
        self.anon(reqwest::Method::POST, &format!("/function/{name}"))
            .body(body.to_string())
            .send()
            .unwrap()
    }

    /// The value of the first `/metrics` series starting with `prefix`.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        let text = self
            .anon(reqwest::Method::GET, "/metrics")
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    /// Scale `name` to zero and wait (10 s at most) until no instance is available.
    pub fn scale_to_zero(&self, name: &str) {
        let r = self.send_json(
            reqwest::Method::POST,
            &format!("/system/scale-function/{name}"),
            serde_json::json!({"serviceName": name, "replicas": 0}),
        );
        assert_eq!(r.status, 202, "{}", r.text);
        let available =
            || self.get_json(&format!("/system/function/{name}"))["availableReplicas"].clone();
        assert!(self.eventually(Duration::from_secs(10), || available() == 0));
    }

    /// Poll until `check` holds or `limit` passes.
    pub fn eventually(&self, limit: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if check() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Platform {
    /// Stop the platform as an operator would (SIGTERM), so it removes its sandboxes, mounts,
    /// cgroups and network; SIGKILL after 20 s. Tests of crashes call `kill9` themselves.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && !matches!(c.try_wait(), Ok(Some(_))) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // What a kill -9 left mounted (a restarted platform would reclaim it; a deleted
        // temporary data directory cannot): without this, crash tests pile up mounts on the
        // host, and every later mount namespace (each runc start) gets slower.
        unmount_below(&self.data_dir);
    }
}

/// Detach every mount at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: umount2(2) with a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

impl Platform {
    /// Run the `virga` CLI in `dir` against this platform (logged in by environment);
    /// asserts success and returns its output.
    pub fn cli(&self, dir: &Path, args: &[&str]) -> String {
        let env = [
            ("VIRGA_URL", self.url.as_str()),
            ("VIRGA_PASSWORD", PASSWORD),
        ];
        cli(dir, &env, args)
    }
}

/// Run the `virga` CLI in `dir` with `env` added (and no gateway or token from the
/// developer's own environment); asserts success and returns its output (stdout, then stderr).
pub fn cli(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = Command::new(virga_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("VIRGA_URL")
        .env_remove("VIRGA_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run virga");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "virga {args:?}:\n{text}");
    text
}
