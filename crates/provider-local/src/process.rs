//! Process isolation, the fallback: every instance is a plain `virga-watchdog` child process
//! on the host, in its own process group, running as the platform's user with its view of the
//! file system. Only here may runtimes be forked from a zygote.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::child;
use crate::isolation::{Handle, Isolation, Life as _, Start, Started};
use crate::spec::{InstanceSpec, View};

/// Plain processes.
pub(crate) struct Processes {
    watchdog: PathBuf,
    /// PATH of every instance: the platform's, then the run directory's `bin/`.
    path: String,
    /// Where the instances' watchdogs listen for handed-over connections (owner-only).
    handoffs: Option<PathBuf>,
}

impl Processes {
    /// Instances of `watchdog`, with `python` provided under `run_dir` if the host has none.
    pub(crate) fn new(watchdog: &Path, run_dir: &Path) -> Processes {
        provide_python(run_dir);
        let host = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        let handoffs = run_dir.join("handoff");
        let made = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&handoffs);
        if let Err(e) = made {
            tracing::warn!(
                "no {} ({e}): WebSockets are spliced twice",
                handoffs.display()
            );
        }
        Processes {
            watchdog: watchdog.to_path_buf(),
            path: format!("{host}:{}", run_dir.join("bin").display()),
            handoffs: handoffs.is_dir().then_some(handoffs),
        }
    }

    /// The hand-off socket of instance `id`, if its path fits a socket address.
    fn handoff_socket(&self, id: &str) -> Option<PathBuf> {
        let path = self.handoffs.as_ref()?.join(format!("{id}.sock"));
        crate::isolation::fits_socket_address(&path).then_some(path)
    }

    fn spawn(&self, s: &Start) -> Result<Started, String> {
        let spec = &s.spec;
        let mut cmd = child::command(&self.watchdog);
        cmd.current_dir(&spec.workdir)
            .env("PATH", &self.path)
            .envs(&spec.env)
            .envs(s.extra.iter().cloned())
            .env("port", "0");
        if spec.env.get("mode").map(String::as_str) == Some("http") {
            let upstream = spec.env.get("upstream_url").cloned().unwrap_or_default();
            let (url, port) = with_free_port(&upstream)?;
            // OpenFaaS's node templates listen on $http_port.
            cmd.env("upstream_url", url)
                .env("http_port", port.to_string());
        }
        if let (Some(sock), Some(fprocess)) = (&s.zygote, spec.env.get("fprocess")) {
            // fprocess is split with shell quoting: quote the paths it is prefixed with.
            let (wd, sock) = (self.watchdog.to_string_lossy(), sock.to_string_lossy());
            if let (Ok(wd), Ok(sock)) = (shlex::try_quote(&wd), shlex::try_quote(&sock)) {
                cmd.env("fprocess", format!("{wd} --zygote {sock} {fprocess}"));
            }
        }
        let handoff = self.handoff_socket(&s.id);
        if let Some(socket) = &handoff {
            cmd.env("handoff_socket", socket);
        }
        let (life, stdout, stderr) = child::spawn(cmd)?;
        let pgid = life.pid().unwrap_or(0);
        Ok(Started {
            life: Box::new(life),
            handle: Arc::new(Process { pgid, handoff }),
            stdout,
            stderr,
        })
    }
}

impl Isolation for Processes {
    fn name(&self) -> &'static str {
        "process"
    }

    fn view(&self) -> View {
        View {
            code: None,
            secrets_owner: None,
        }
    }

    fn images(&self) -> bool {
        false
    }

    fn zygotes(&self) -> bool {
        true
    }

    fn start(self: Arc<Self>, start: Start) -> BoxFuture<'static, Result<Started, String>> {
        Box::pin(async move { self.spawn(&start) })
    }

    fn shutdown(&self) {}
}

/// A running instance: the process group its watchdog leads.
struct Process {
    pgid: u32,
    handoff: Option<PathBuf>,
}

impl Drop for Process {
    fn drop(&mut self) {
        // The watchdog removes it when it exits normally; not when it is killed.
        if let Some(socket) = &self.handoff {
            let _ = std::fs::remove_file(socket);
        }
    }
}

impl Handle for Process {
    fn reach(&self, printed: SocketAddr) -> SocketAddr {
        printed
    }

    fn oom_kills(&self) -> u64 {
        0
    }

    fn cpu_seconds(&self) -> f64 {
        group_cpu_seconds(self.pgid)
    }

    fn handoff(&self) -> Option<&Path> {
        self.handoff.as_deref()
    }

    fn attach(
        &self,
        spec: &InstanceSpec,
        _env: &mut BTreeMap<String, String>,
    ) -> Result<PathBuf, String> {
        Ok(spec.workdir.clone())
    }
}

/// Make `run_dir/bin/python` name the host's python3 if the host has no `python` on PATH
/// (OpenFaaS templates' `fprocess: python index.py` expects one).
fn provide_python(run_dir: &Path) {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    if on_path("python").is_some() {
        return;
    }
    let Some(python3) = on_path("python3") else {
        return;
    };
    let bin = run_dir.join("bin");
    if let Err(e) = std::fs::create_dir_all(&bin)
        .and_then(|()| std::os::unix::fs::symlink(&python3, bin.join("python")))
    {
        tracing::warn!("cannot provide `python` for templates that call it: {e}");
    }
}

/// `upstream_url` with its port replaced by a free one, so replicas do not collide; and
/// that port.
fn with_free_port(upstream: &str) -> Result<(String, u16), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let rest = upstream.strip_prefix("http://").unwrap_or("127.0.0.1:5000");
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    Ok((format!("http://127.0.0.1:{port}{path}"), port))
}

/// CPU seconds (user + system, including waited-for children) of every process in the
/// process group `pgid`, from `/proc`.
fn group_cpu_seconds(pgid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces) start at the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state); pgrp is field 5, utime..cstime are fields 14-17.
        if f.len() > 14 && f[2].parse::<u32>().ok() == Some(pgid) {
            ticks += f[11..15]
                .iter()
                .filter_map(|v| v.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    ticks as f64 / hz
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;
    use crate::boot::{boot, Booted};
    use crate::config::{Ctx, IsolationKind, ProviderConfig};

    /// The workspace's `virga-watchdog` (built by `cargo build --workspace`).
    fn watchdog() -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap();
        let p = dir.join("virga-watchdog");
        assert!(
            p.is_file(),
            "no {}: run `cargo build --workspace`",
            p.display()
        );
        p
    }

    fn ctx(run_dir: &Path) -> Ctx {
        Ctx::new(ProviderConfig {
            watchdog: watchdog(),
            run_dir: run_dir.to_path_buf(),
            secrets_dir: run_dir.join("secrets"),
            ready_timeout: Duration::from_secs(10),
            queue_timeout: Duration::from_secs(1),
            metrics: Arc::new(virga_metrics::Metrics::new()),
            logs: Arc::new(virga_logs::LogHub::new(virga_logs::LogConfig::default())),
            isolation: IsolationKind::Process,
            warm_pool: 0,
            runtimes: Vec::new(),
            zygote: false,
            images: None,
            node_addon: None,
        })
    }

    /// Boot a classic function running `fprocess` per request.
    async fn classic(ctx: &Ctx, dir: &Path, fprocess: &str) -> Booted {
        let env = BTreeMap::from([
            ("fprocess".to_string(), fprocess.to_string()),
            ("mode".to_string(), "serializing".to_string()),
        ]);
        let spec = InstanceSpec::generic("t".into(), env, dir.into(), dir.join("none"));
        boot(ctx, &Arc::new(spec), "t-1", None).await.unwrap()
    }

    /// POST `body` to the watchdog at `addr`; the whole answer.
    fn post(addr: SocketAddr, body: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    }

    fn exists(pid: u32) -> bool {
        // SAFETY: signal 0 only checks existence.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_process_instance_serves_at_the_address_it_printed_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path());
        let mut b = classic(&ctx, dir.path(), "cat").await;
        assert!(b.addr.ip().is_loopback(), "{}", b.addr);
        let answer = tokio::task::spawn_blocking(move || post(b.addr, "hello"))
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hello"), "{answer}");
        let pid = b.life.pid().unwrap();
        assert!(b.life.running());
        b.life.stop().await;
        assert!(!b.life.running());
        assert!(!exists(pid), "the watchdog outlived its stop");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_instance_that_dies_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path());
        let mut b = classic(&ctx, dir.path(), "cat").await;
        let pid = b.life.pid().unwrap();
        // SAFETY: kill(2) on the process group of the watchdog this test started.
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        let why = tokio::time::timeout(Duration::from_secs(5), b.life.ended())
            .await
            .unwrap();
        assert!(why.contains("signal: 9"), "{why}");
        assert_eq!(b.handle.oom_kills(), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cpu_seconds_count_what_the_instances_calls_used() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = ctx(dir.path());
        let busy = "sh -c 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo done'";
        let mut b = classic(&ctx, dir.path(), busy).await;
        let before = b.handle.cpu_seconds();
        let addr = b.addr;
        let answer = tokio::task::spawn_blocking(move || post(addr, ""))
            .await
            .unwrap();
        assert!(answer.ends_with("done\n"), "{answer}");
        let used = b.handle.cpu_seconds() - before;
        assert!(used > 0.05, "{used} CPU seconds");
        b.life.stop().await;
    }
}
