//! One deployed function's instances: how many are wanted, starting and stopping instances to
//! match, and the life of each, from its start (a pooled runtime bound to the function, else a
//! cold start) until it ends or is stopped, replaced with backoff while it keeps crashing.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use virga_types::ScalingPolicy;

use crate::boot::boot;
use crate::config::Ctx;
use crate::instance::Instance;
use crate::pool::{PoolUse, WarmPool};
use crate::spec::InstanceSpec;

/// Instance numbers, unique for the platform's life (sandbox names derive from them).
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);
/// How long a drained instance's upgraded connections get to close once told to.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// One function's instances.
pub(crate) struct Function {
    pub(crate) spec: Arc<InstanceSpec>,
    /// How its starts can use the warm pool and zygotes, if they can.
    pub(crate) pool_use: Option<PoolUse>,
    pub(crate) desired: AtomicU64,
    pub(crate) instances: Mutex<Vec<Arc<Instance>>>,
    /// Woken whenever an instance becomes ready or dies, or a limited instance frees a slot.
    pub(crate) changed: Arc<Notify>,
    /// The `com.openfaas.scale.*` labels.
    pub(crate) policy: ScalingPolicy,
    /// The watchdog's `max_inflight` (0: unlimited).
    pub(crate) limit: usize,
    /// Requests that asked for an instance, ever (the autoscaler's rps and idleness).
    pub(crate) arrivals: AtomicU64,
    /// Requests waiting for an instance right now.
    pub(crate) waiting: AtomicUsize,
    pub(crate) stopped: AtomicBool,
    /// Consecutive instances that died before serving; drives restart backoff.
    pub(crate) crash_streak: AtomicUsize,
    pub(crate) ctx: Arc<Ctx>,
    pub(crate) pool: Arc<WarmPool>,
}

impl Function {
    /// A function running `spec` with `replicas` wanted (none started yet: see `reconcile`).
    pub(crate) fn new(
        spec: InstanceSpec,
        policy: ScalingPolicy,
        replicas: u64,
        ctx: Arc<Ctx>,
        pool: Arc<WarmPool>,
    ) -> Function {
        let limit = virga_types::max_inflight(&spec.env).unwrap_or(0);
        Function {
            pool_use: pool.use_for(&spec),
            spec: Arc::new(spec),
            desired: AtomicU64::new(replicas),
            instances: Mutex::new(Vec::new()),
            changed: Arc::new(Notify::new()),
            policy,
            limit,
            arrivals: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            crash_streak: AtomicUsize::new(0),
            ctx,
            pool,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<Arc<Instance>>> {
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn ready_count(&self) -> u64 {
        self.lock().iter().filter(|i| i.is_ready()).count() as u64
    }

    /// Start or stop instances until their number matches `desired`.
    pub(crate) fn reconcile(self: &Arc<Self>) {
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        // Never beyond the function's own maximum, whatever was stored or asked for.
        let want = self.desired.load(Ordering::SeqCst).min(self.policy.max) as usize;
        let mut list = self.lock();
        while list.len() < want {
            let id = format!(
                "{}-{}",
                self.spec.name,
                NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed)
            );
            let inst = Arc::new(Instance::new(id, self.limit, &self.changed));
            list.push(inst.clone());
            tokio::spawn(run(self.clone(), inst));
        }
        if list.len() > want {
            // Stop the least useful first: not ready, then least busy (the fewest requests
            // and connections to drain).
            list.sort_by_key(|i| (i.is_ready(), i.inflight()));
            let surplus = list.len() - want;
            for inst in list.drain(..surplus) {
                inst.stop();
            }
        }
    }

    /// Stop every instance for good (the function was removed or replaced).
    pub(crate) fn stop_all(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for inst in self.lock().drain(..) {
            inst.stop();
        }
        self.changed.notify_waiters();
    }

    /// Set the wanted instances (the autoscaler's decision), unless the function is at zero.
    pub(crate) fn autoscale(self: &Arc<Self>, replicas: u64) {
        if self.desired.load(Ordering::SeqCst) != 0 {
            self.desired.store(replicas.max(1), Ordering::SeqCst);
            self.reconcile();
        }
    }

    /// Go to zero instances if no request arrived since `arrivals` and none is in flight.
    pub(crate) fn scale_idle_to_zero(self: &Arc<Self>, arrivals: u64) -> bool {
        let list = self.lock();
        let busy = list.iter().any(|i| i.inflight() > 0) || self.waiting.load(Ordering::SeqCst) > 0;
        if busy || self.arrivals.load(Ordering::SeqCst) != arrivals {
            return false;
        }
        self.desired.store(0, Ordering::SeqCst);
        drop(list);
        self.reconcile();
        true
    }
}

/// The life of one instance, from its start to its end.
async fn run(func: Arc<Function>, inst: Arc<Instance>) {
    let started = tokio::time::Instant::now();
    let served = match start_and_wait(&func, &inst).await {
        Ok(served) => served,
        Err(why) => {
            tracing::warn!(function = %func.spec.name, instance = %inst.id, "{why}");
            func.spec.record_failure(why);
            false
        }
    };
    inst.set_gone();
    func.lock().retain(|i| !Arc::ptr_eq(i, &inst));
    func.changed.notify_waiters();
    if inst.stopping() || func.stopped.load(Ordering::SeqCst) {
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

/// Get a ready instance (from the warm pool, else started cold), serve until it ends or is
/// stopped. Ok(true) if it ever became ready.
async fn start_and_wait(func: &Arc<Function>, inst: &Arc<Instance>) -> Result<bool, String> {
    let spec = &func.spec;
    let pooled = match func.pool_use.as_ref() {
        Some(use_) if func.pool.serves() => func.pool.take(spec, use_, &inst.id).await,
        _ => None,
    };
    let booted = match pooled {
        Some(b) => {
            b.log_as(func.ctx.cfg.logs.function(&spec.name), &inst.id);
            b
        }
        None => tokio::select! {
            b = boot(&func.ctx, spec, &inst.id, func.pool.zygote(func.pool_use.as_ref())) => b?,
            _ = inst.stop_requested() => return Ok(false),
        },
    };
    let mut life = booted.life;
    inst.set_ready(booted.addr, booted.handle, life.pid());
    func.crash_streak.store(0, Ordering::SeqCst);
    func.changed.notify_waiters();
    tokio::select! {
        why = life.ended() => Err(if inst.unreported_oom_kills() {
            format!("{why}: the instance ran out of memory and was killed")
        } else {
            why
        }),
        _ = inst.stop_requested() => {
            // Out of rotation now; what it serves gets its grace (a crash ends that too).
            let hurry = func.ctx.closing.subscribe();
            tokio::select! {
                () = inst.drain(spec.drain_grace, CLOSE_WAIT, hurry) => {}
                _ = life.ended() => return Ok(true),
            }
            life.stop().await;
            Ok(true)
        }
    }
}
