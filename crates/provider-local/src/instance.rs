//! One instance: a `virga-watchdog` process in its own process group. Its task starts it,
//! reads the bound address from its first stdout line, waits for `/_/ready`, marks it ready,
//! forwards its output to the platform log, and replaces it if it dies while still wanted.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::Notify;

use crate::Function;

/// Prefix of the line the watchdog prints once bound.
const LISTENING: &str = "virga-watchdog listening on ";

/// A running (or starting) watchdog process.
pub(crate) struct Instance {
    pub(crate) id: String,
    addr: OnceLock<SocketAddr>,
    ready: AtomicBool,
    inflight: AtomicUsize,
    pid: AtomicU32,
    stopping: AtomicBool,
    stop: Notify,
}

impl Instance {
    pub(crate) fn new(id: String) -> Instance {
        Instance {
            id,
            addr: OnceLock::new(),
            ready: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            pid: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst)
    }

    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::SeqCst)).filter(|&p| p != 0)
    }

    /// Ask the instance to stop; its task terminates the process.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_one();
    }
}

/// A claim on one instance for one request; releases the in-flight slot when dropped.
pub struct Lease {
    inst: Arc<Instance>,
    addr: SocketAddr,
}

impl Lease {
    /// The instance's watchdog address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The instance id (for logs).
    pub fn instance(&self) -> &str {
        &self.inst.id
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.inst.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The ready instance with the fewest requests in flight.
pub(crate) fn pick(list: &[Arc<Instance>]) -> Option<Lease> {
    let inst = list
        .iter()
        .filter(|i| i.is_ready())
        .min_by_key(|i| i.inflight())?;
    let addr = *inst.addr.get()?;
    inst.inflight.fetch_add(1, Ordering::Relaxed);
    Some(Lease {
        inst: inst.clone(),
        addr,
    })
}

/// The life of one instance, from spawn to exit.
pub(crate) async fn run(func: Arc<Function>, inst: Arc<Instance>) {
    let started = tokio::time::Instant::now();
    let served = match start_and_wait(&func, &inst).await {
        Ok(served) => served,
        Err(why) => {
            tracing::warn!(function = %func.spec.name, instance = %inst.id, "{why}");
            func.spec.record_failure(why);
            false
        }
    };
    inst.ready.store(false, Ordering::SeqCst);
    func.lock().retain(|i| !Arc::ptr_eq(i, &inst));
    func.changed.notify_waiters();
    if inst.stopping.load(Ordering::SeqCst) || func.stopped.load(Ordering::SeqCst) {
        return;
    }
    // Died on its own while wanted: replace it, backing off while it keeps crashing early.
    let streak = if served || started.elapsed() > Duration::from_secs(10) {
        func.crash_streak.store(0, Ordering::SeqCst);
        0
    } else {
        func.crash_streak.fetch_add(1, Ordering::SeqCst) + 1
    };
    let backoff = Duration::from_millis(50u64 << streak.min(7));
    tokio::time::sleep(backoff).await;
    func.reconcile();
}

/// Spawn, wait for readiness, serve until exit or stop. Ok(true) if it ever became ready.
async fn start_and_wait(func: &Arc<Function>, inst: &Arc<Instance>) -> Result<bool, String> {
    let spec = &func.spec;
    let mut cmd = Command::new(&func.cfg.watchdog);
    cmd.env_clear()
        .envs(inherited_env())
        .envs(&spec.env)
        .env("port", "0")
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if spec.env.get("mode").map(String::as_str) == Some("http") {
        let upstream = spec.env.get("upstream_url").cloned().unwrap_or_default();
        cmd.env("upstream_url", with_free_port(&upstream)?);
    }
    // SAFETY: prctl is async-signal-safe; it makes the watchdog die with the platform.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", func.cfg.watchdog.display()))?;
    inst.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    if let Some(err) = stderr {
        tokio::spawn(forward_log(spec.name.clone(), inst.id.clone(), err));
    }
    let boot = async {
        let addr = read_addr(&spec.name, &inst.id, stdout).await?;
        let _ = inst.addr.set(addr);
        wait_ready(addr).await;
        Ok::<_, String>(())
    };
    tokio::select! {
        r = tokio::time::timeout(func.cfg.ready_timeout, boot) => match r {
            Ok(Ok(())) => {
                inst.ready.store(true, Ordering::SeqCst);
                func.crash_streak.store(0, Ordering::SeqCst);
                func.changed.notify_waiters();
            }
            Ok(Err(e)) => { terminate(&mut child).await; return Err(e); }
            Err(_) => {
                terminate(&mut child).await;
                return Err(format!("not ready after {:?}", func.cfg.ready_timeout));
            }
        },
        status = child.wait() => return Err(exit_reason(status)),
        _ = inst.stop.notified() => { terminate(&mut child).await; return Ok(false); }
    }
    tokio::select! {
        status = child.wait() => Err(exit_reason(status)),
        _ = inst.stop.notified() => { terminate(&mut child).await; Ok(true) }
    }
}

fn exit_reason(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => format!("watchdog exited ({s})"),
        Err(e) => format!("watchdog wait failed: {e}"),
    }
}

/// Variables passed through from the platform's environment; the rest is not the function's.
fn inherited_env() -> Vec<(String, String)> {
    ["PATH", "LANG", "LC_ALL", "TZ"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .chain([("HOME".to_string(), "/tmp".to_string())])
        .collect()
}

/// `upstream_url` with its port replaced by a free one, so replicas do not collide.
fn with_free_port(upstream: &str) -> Result<String, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let rest = upstream.strip_prefix("http://").unwrap_or("127.0.0.1:5000");
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    Ok(format!("http://127.0.0.1:{port}{path}"))
}

async fn read_addr(
    name: &str,
    id: &str,
    stdout: Option<tokio::process::ChildStdout>,
) -> Result<SocketAddr, String> {
    let stdout = stdout.ok_or("watchdog stdout not captured")?;
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(addr) = line.strip_prefix(LISTENING) {
            let addr = addr
                .trim()
                .parse()
                .map_err(|e| format!("bad address {addr:?}: {e}"))?;
            tokio::spawn(forward_log(
                name.to_string(),
                id.to_string(),
                lines.into_inner(),
            ));
            return Ok(addr);
        }
        tracing::info!(target: "function", function = %name, instance = %id, "{line}");
    }
    Err("watchdog exited before listening".into())
}

/// Poll `/_/ready` until it answers 200; the caller bounds the wait.
async fn wait_ready(addr: SocketAddr) {
    let mut delay = Duration::from_millis(1);
    loop {
        if probe(addr).await {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

async fn probe(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    let req = b"GET /_/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if s.write_all(req).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf).await, Ok(n) if n >= 12 && &buf[9..12] == b"200")
}

async fn forward_log<R: AsyncRead + Unpin>(name: String, id: String, r: R) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(target: "function", function = %name, instance = %id, "{line}");
    }
}

/// SIGTERM the process group, then SIGKILL it if it has not exited in time.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        signal_group(pid, libc::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(3), child.wait())
            .await
            .is_err()
        {
            signal_group(pid, libc::SIGKILL);
        }
    }
    let _ = child.wait().await;
}

fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's process group; errors (already gone) are harmless.
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

/// Wait until none of `pids` exists any more, at most `limit`.
pub(crate) async fn wait_gone(pids: &[u32], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        // SAFETY: signal 0 only checks existence.
        let alive = pids
            .iter()
            .any(|&p| unsafe { libc::kill(p as libc::pid_t, 0) } == 0);
        if !alive {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for &p in pids {
        signal_group(p, libc::SIGKILL);
    }
}
