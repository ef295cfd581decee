//! One instance: a `virga-watchdog` process in its own process group. Its task starts it,
//! reads the bound address from its first stdout line, waits for the ready line, marks it ready,
//! forwards its output to the platform log, and replaces it if it dies while still wanted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;
use virga_provider::{Lease, LeaseSlot};

use crate::boot::{boot, terminate, Booted};
use crate::launch::Launch;
use crate::Function;

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

impl LeaseSlot for Instance {
    fn id(&self) -> &str {
        &self.id
    }

    fn release(&self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
        if let Some(wake) = &self.wake {
            wake.notify_waiters();
        }
    }

    /// Out of rotation, so a retry goes elsewhere (its task replaces it once the process is
    /// seen gone).
    fn mark_unreachable(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }

    fn take_oom_kill(&self) -> bool {
        let Some(launch) = self.launch.get() else {
            return false;
        };
        let now = launch.oom_kills();
        now > self.oom_seen.swap(now, Ordering::SeqCst)
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
            return Some(Lease::new(addr, inst.clone()));
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
    let pooled = match func.pool_use.as_ref() {
        Some(use_) if func.pool.serves() => func.pool.take(spec, use_, &inst.id).await,
        _ => None,
    };
    let booted = match pooled {
        Some(b) => {
            b.log_as(func.cfg.logs.function(&spec.name), &inst.id);
            b
        }
        None => tokio::select! {
            b = boot(&func.cfg, spec, &inst.id, func.pool.zygote(func.pool_use.as_ref())) => b?,
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

fn exit_reason(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => format!("watchdog exited ({s})"),
        Err(e) => format!("watchdog wait failed: {e}"),
    }
}
