//! One instance: a `virga-watchdog` process in its own process group. Its task starts it,
//! reads the bound address from its first stdout line, waits for the ready line, marks it ready,
//! forwards its output to the platform log, and replaces it if it dies while still wanted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;

use crate::launch::Launch;
use tokio::sync::Notify;

use crate::pool::Booted;
use crate::spec::InstanceSpec;
use crate::{Function, ProviderConfig};

/// Prefix of the line the watchdog prints once bound.
const LISTENING: &str = "virga-watchdog listening on ";
/// The line the watchdog prints the moment its function can serve (readiness is pushed).
const READY: &str = "virga-watchdog ready";

/// A running (or starting) watchdog process.
pub(crate) struct Instance {
    pub(crate) id: String,
    addr: OnceLock<SocketAddr>,
    ready: AtomicBool,
    inflight: AtomicUsize,
    pid: AtomicU32,
    stopping: AtomicBool,
    stop: Notify,
    launch: OnceLock<Arc<Launch>>,
    /// OOM kills already reported, so each is reported once.
    oom_seen: AtomicU64,
    /// The watchdog's `max_inflight` (0: unlimited).
    limit: usize,
    /// Woken when a slot of a limited instance frees up (the function's `changed`).
    wake: Option<Arc<Notify>>,
}

impl Instance {
    pub(crate) fn new(id: String, limit: usize, changed: &Arc<Notify>) -> Instance {
        Instance {
            limit,
            wake: (limit > 0).then(|| changed.clone()),
            id,
            addr: OnceLock::new(),
            ready: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            pid: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            launch: OnceLock::new(),
            oom_seen: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.stopping.load(Ordering::SeqCst)
    }

    pub(crate) fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Whether the instance is ready and below its `max_inflight`.
    pub(crate) fn has_room(&self) -> bool {
        self.is_ready() && (self.limit == 0 || self.inflight() < self.limit)
    }

    /// Take one in-flight slot if the instance is below its limit.
    fn claim(&self) -> bool {
        let limit = self.limit;
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok()
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

impl Lease {
    /// The instance refused connections: take it out of rotation so a retry goes elsewhere
    /// (its task replaces it once the process is seen gone).
    pub fn mark_unreachable(&self) {
        self.inst.ready.store(false, Ordering::SeqCst);
    }

    /// True when the instance's function was OOM-killed since the last time this was asked.
    pub fn take_oom_kill(&self) -> bool {
        let Some(launch) = self.inst.launch.get() else {
            return false;
        };
        let now = launch.oom_kills();
        now > self.inst.oom_seen.swap(now, Ordering::SeqCst)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.inst.inflight.fetch_sub(1, Ordering::AcqRel);
        if let Some(wake) = &self.inst.wake {
            wake.notify_waiters();
        }
    }
}

/// The ready instance with the fewest requests in flight that is below its `max_inflight`.
pub(crate) fn pick(list: &[Arc<Instance>]) -> Option<Lease> {
    for _ in 0..list.len().max(1) {
        let inst = list
            .iter()
            .filter(|i| i.has_room())
            .min_by_key(|i| i.inflight())?;
        let Some(&addr) = inst.addr.get() else {
            continue;
        };
        if inst.claim() {
            return Some(Lease {
                inst: inst.clone(),
                addr,
            });
        }
    }
    None
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

/// Get a ready watchdog (from the warm pool, else started cold), serve until exit or stop.
/// Ok(true) if it ever became ready.
async fn start_and_wait(func: &Arc<Function>, inst: &Arc<Instance>) -> Result<bool, String> {
    let spec = &func.spec;
    let pooled = match spec.pool.as_ref().filter(|_| func.pool.serves(&spec.pool)) {
        Some(use_) => func.pool.take(spec, use_).await,
        None => None,
    };
    let booted = match pooled {
        Some(b) => {
            b.log_as(func.cfg.logs.function(&spec.name), &inst.id);
            b
        }
        None => tokio::select! {
            b = boot(&func.cfg, spec, &inst.id, func.pool.zygote(spec.pool.as_ref())) => b?,
            _ = inst.stop.notified() => return Ok(false),
        },
    };
    let Booted {
        mut child,
        launch,
        addr,
        ..
    } = booted;
    inst.pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
    let _ = inst.addr.set(addr);
    let launch = Arc::new(launch);
    let _ = inst.launch.set(launch.clone());
    inst.ready.store(true, Ordering::SeqCst);
    func.crash_streak.store(0, Ordering::SeqCst);
    func.changed.notify_waiters();
    let result = tokio::select! {
        status = child.wait() => Err(exit_reason(status)),
        _ = inst.stop.notified() => { terminate(&mut child).await; Ok(true) }
    };
    if launch.oom_kills() > inst.oom_seen.load(Ordering::SeqCst) && result.is_err() {
        spec.record_failure("the instance ran out of memory and was killed".into());
    }
    result
}

/// Start `spec`'s watchdog as instance `id` (its runtime forked by `zygote` if given) and
/// wait until it says it is ready.
pub(crate) async fn boot(
    cfg: &ProviderConfig,
    spec: &Arc<InstanceSpec>,
    id: &str,
    zygote: Option<std::path::PathBuf>,
) -> Result<Booted, String> {
    let t0 = std::time::Instant::now();
    let (launch, mut cmd) = Launch::prepare(cfg, spec, id, zygote.as_deref()).await?;
    let prepared = t0.elapsed();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cfg.watchdog.display()))?;
    let spawned = t0.elapsed();
    let target = LogTarget::new(cfg.logs.function(&spec.name), id);
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_log(target.clone(), err));
    }
    let stdout = child.stdout.take().ok_or("watchdog stdout not captured")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = async {
        let printed = read_until(&target, &mut lines, LISTENING).await?;
        let listening = t0.elapsed();
        let addr: SocketAddr = printed
            .trim()
            .parse()
            .map_err(|e| format!("bad address {printed:?}: {e}"))?;
        read_until(&target, &mut lines, READY).await?;
        tracing::debug!(
            instance = %id,
            ?prepared,
            ?spawned,
            ?listening,
            ready = ?t0.elapsed(),
            "instance started"
        );
        Ok::<_, String>(launch.reach(addr))
    };
    let addr = match tokio::time::timeout(cfg.ready_timeout, ready).await {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => {
            terminate(&mut child).await;
            return Err(e);
        }
        Err(_) => {
            terminate(&mut child).await;
            return Err(format!("not ready after {:?}", cfg.ready_timeout));
        }
    };
    tokio::spawn(forward_log(target.clone(), lines.into_inner()));
    Ok(Booted {
        id: id.to_string(),
        child,
        launch,
        addr,
        log: target,
    })
}

fn exit_reason(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => format!("watchdog exited ({s})"),
        Err(e) => format!("watchdog wait failed: {e}"),
    }
}

/// Where an instance's output lines go: its function's log under its id. Switchable, because
/// a pooled instance starts under the pool's name and is handed to a function later.
#[derive(Clone)]
pub(crate) struct LogTarget(Arc<Mutex<(Arc<virga_logs::FunctionLog>, String)>>);

impl LogTarget {
    /// Lines go to `log` under instance id `id`.
    pub(crate) fn new(log: Arc<virga_logs::FunctionLog>, id: &str) -> LogTarget {
        LogTarget(Arc::new(Mutex::new((log, id.to_string()))))
    }

    /// Send further lines to `log` under instance id `id`.
    pub(crate) fn set(&self, log: Arc<virga_logs::FunctionLog>, id: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = (log, id.to_string());
    }

    fn push(&self, line: &str) {
        let (log, id) = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        tracing::debug!(target: "function", function = %log.name(), instance = %id, "{line}");
        log.push(&id, line);
    }
}

/// Read stdout lines (logging the others) until one starts with `prefix`; returns the rest of it.
async fn read_until(
    log: &LogTarget,
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    prefix: &str,
) -> Result<String, String> {
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(rest) = line.strip_prefix(prefix) {
            return Ok(rest.to_string());
        }
        log.push(&line);
    }
    Err(format!("watchdog exited before printing {prefix:?}"))
}

/// Push every line of `r` into the log (read as bytes: bad UTF-8 cannot stop it).
pub(crate) async fn forward_log<R: AsyncRead + Unpin>(log: LogTarget, r: R) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    while matches!(r.read_until(b'\n', &mut buf).await, Ok(n) if n > 0) {
        let text = String::from_utf8_lossy(&buf);
        log.push(text.trim_end_matches(['\n', '\r']));
        buf.clear();
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
