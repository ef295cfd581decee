//! One instance as requests see it: whether it is ready, how many requests it has in flight
//! (within its `max_inflight`), its address, and the lease a request holds on it. Picking
//! the least busy ready instance is the request path: atomics only, no allocation. A stopped
//! instance drains: out of rotation at once, it waits for its leases (requests, upgraded
//! connections) to end within its grace, then tells the upgraded connections to close.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::futures::Notified;
use tokio::sync::{watch, Notify};
use virga_provider::{Lease, LeaseSlot};

use crate::isolation::Handle;

/// A running (or starting) instance.
pub(crate) struct Instance {
    pub(crate) id: String,
    addr: OnceLock<SocketAddr>,
    ready: AtomicBool,
    inflight: AtomicUsize,
    /// The host process to wait for at shutdown (0: none yet).
    pid: AtomicU32,
    stopping: AtomicBool,
    stop: Notify,
    /// Set when a drain's grace is over: upgraded connections close.
    closing: AtomicBool,
    /// Woken while it drains, whenever a lease ends or `closing` is set.
    drain: Notify,
    handle: OnceLock<Arc<dyn Handle>>,
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
            closing: AtomicBool::new(false),
            drain: Notify::new(),
            handle: OnceLock::new(),
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

    /// Ask the instance to stop; its task stops it.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.stop.notify_one();
    }

    /// Whether it was asked to stop.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Resolves when it is asked to stop (also if it was asked before).
    pub(crate) fn stop_requested(&self) -> Notified<'_> {
        self.stop.notified()
    }

    /// After a stop: wait for its leases to end, at most `grace` (or until `hurry` says the
    /// platform shuts down), then tell the upgraded connections left to close and give them
    /// `close_wait` to go.
    pub(crate) async fn drain(
        &self,
        grace: Duration,
        close_wait: Duration,
        mut hurry: watch::Receiver<bool>,
    ) {
        tokio::select! {
            () = self.no_leases() => return,
            () = tokio::time::sleep(grace) => {}
            _ = hurry.wait_for(|h| *h) => {}
        }
        tracing::info!(instance = %self.id, open = self.inflight(), ?grace, "drain grace over: closing connections");
        self.closing.store(true, Ordering::SeqCst);
        self.drain.notify_waiters();
        let _ = tokio::time::timeout(close_wait, self.no_leases()).await;
    }

    /// Completes once nothing is in flight (checked whenever a lease ends while it drains).
    async fn no_leases(&self) {
        loop {
            let notified = self.drain.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.inflight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// It started (reachable at `addr`, its host process `pid`) and is ready for requests.
    pub(crate) fn set_ready(&self, addr: SocketAddr, handle: Arc<dyn Handle>, pid: Option<u32>) {
        self.pid.store(pid.unwrap_or(0), Ordering::SeqCst);
        let _ = self.addr.set(addr);
        let _ = self.handle.set(handle);
        self.ready.store(true, Ordering::SeqCst);
    }

    /// It takes no more requests (it ended, or is ending).
    pub(crate) fn set_gone(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }

    /// What it runs in, once it started.
    pub(crate) fn handle(&self) -> Option<&Arc<dyn Handle>> {
        self.handle.get()
    }

    /// Whether OOM kills happened in it that no request has reported yet.
    pub(crate) fn unreported_oom_kills(&self) -> bool {
        self.handle
            .get()
            .is_some_and(|h| h.oom_kills() > self.oom_seen.load(Ordering::SeqCst))
    }
}

impl LeaseSlot for Instance {
    fn id(&self) -> &str {
        &self.id
    }

    fn release(&self) {
        self.inflight.fetch_sub(1, Ordering::SeqCst);
        if let Some(wake) = &self.wake {
            wake.notify_waiters();
        }
        if self.stopping.load(Ordering::SeqCst) {
            self.drain.notify_waiters();
        }
    }

    fn closing(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let notified = self.drain.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.closing.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        })
    }

    fn handoff(&self) -> Option<&std::path::Path> {
        self.handle.get().and_then(|h| h.handoff())
    }

    /// Out of rotation, so a retry goes elsewhere (its task replaces it once the process is
    /// seen gone).
    fn mark_unreachable(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }

    fn take_oom_kill(&self) -> bool {
        let Some(handle) = self.handle.get() else {
            return false;
        };
        let now = handle.oom_kills();
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
