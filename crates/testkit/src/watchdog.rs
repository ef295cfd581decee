//! The real `virga-watchdog` binary run with `port=0`: its printed address is read, and it is
//! stopped (SIGTERM, then SIGKILL) when dropped.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Watchdog variables cleared so the caller's environment cannot leak in.
const WATCHDOG_VARS: &[&str] = &[
    "fprocess",
    "function_process",
    "mode",
    "upstream_url",
    "exec_timeout",
    "read_timeout",
    "write_timeout",
    "max_inflight",
    "content_type",
    "prefix_logs",
    "healthcheck_interval",
    "bind_address",
    "cgi_headers",
];

/// A running watchdog process.
pub struct Watchdog {
    child: Option<Child>,
    /// `ip:port` printed by the watchdog.
    pub addr: String,
}

impl Watchdog {
    /// Starts the watchdog with the given variables and waits for its address line.
    pub fn start(env: &[(&str, &str)]) -> Watchdog {
        let mut cmd = Command::new(crate::watchdog_bin());
        for var in WATCHDOG_VARS {
            cmd.env_remove(var);
        }
        cmd.env("port", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn virga-watchdog");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the watchdog never sees a closed stdout.
            let _ = std::io::copy(&mut reader.by_ref(), &mut std::io::sink());
        });
        let mut wd = Watchdog {
            child: Some(child),
            addr: String::new(),
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("watchdog did not print its address");
        let addr = line
            .trim()
            .strip_prefix("virga-watchdog listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        wd.addr = addr.to_owned();
        wd
    }

    /// Full URL for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL the watchdog (its function processes are left to it) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes an `sh` script into `dir` and returns its path.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write script");
    path
}

/// An HTTP client without pooling surprises.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Polls `url` until it answers `status`, or panics after `limit`.
pub async fn wait_for_status(client: &reqwest::Client, url: &str, status: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(resp) = client.get(url).send().await {
            if resp.status().as_u16() == status {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{url} never returned {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
