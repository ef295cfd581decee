//! The worker pool: one dispatcher task per named queue takes due calls off it and runs each
//! delivery in its own task, within the function's concurrency (a per-function gate sized by
//! [`Deliver::settings`]) and a per-queue cap, so one busy function cannot starve other queues.
//! A delivery goes through [`Deliver::invoke`] (the gateway's sync invoke path, which scales a
//! function up from zero); a retryable answer is rescheduled with backoff, an exhausted one is
//! dead-lettered, and for a call with a callback URL the final answer replaces the call in the
//! queue (durably, before the call counts as done) for the callback dispatcher to POST.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};

use crate::callback::Callbacks;
use crate::{
    Backoff, Call, CallResult, CallbackPolicy, Delivery, Ending, FunctionPolicy, QueueError,
    SharedQueue, Timing, DEFAULT_QUEUE,
};

/// What the pool needs to know about a function before delivering to it.
#[derive(Debug, Clone)]
pub struct FunctionSettings {
    /// Retry policy, queue and cap from its annotations.
    pub policy: FunctionPolicy,
    /// How many of its calls may be delivered at once now.
    pub concurrency: usize,
}

/// A function's answer to one delivery.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// HTTP status (the gateway's own for failures: 502, 503, 504, 404, ...).
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Response body (at most the async body limit).
    pub body: Bytes,
    /// The body was cut at the limit.
    pub truncated: bool,
    /// The instance could not be reached at all.
    pub connection_failed: bool,
    /// The function answered with an error of its own (a Lambda function error): retried and
    /// dead-lettered whatever the status.
    pub function_error: bool,
}

/// Delivers calls to functions: implemented by the gateway over its invoke path.
pub trait Deliver: Send + Sync + 'static {
    /// The settings of `call`'s function for it; `None` if it does not exist (any more).
    fn settings(&self, call: &Call) -> Option<FunctionSettings>;
    /// Call the function with `call`'s request.
    fn invoke<'a>(&'a self, call: &'a Call) -> BoxFuture<'a, Outcome>;
    /// A call of `function` is scheduled for another attempt (for metrics).
    fn retried(&self, _function: &str) {}
    /// A call of `function` was given up on and dead-lettered (for metrics).
    fn dead_lettered(&self, _function: &str) {}
}

/// Settings of the worker pool.
#[derive(Clone)]
pub struct PoolConfig {
    /// Clock and jitter for backoff.
    pub timing: Timing,
    /// Most deliveries in flight per queue.
    pub queue_inflight: usize,
    /// Most callbacks being sent at once.
    pub callback_inflight: usize,
    /// First wait between callback attempts (doubles, with jitter).
    pub callback_min_wait: Duration,
    /// Longest wait between callback attempts.
    pub callback_max_wait: Duration,
    /// How long a callback is retried before its result is dead-lettered.
    pub callback_retry_for: Duration,
    /// Time limit of one callback request.
    pub callback_timeout: Duration,
    /// Which addresses callbacks may reach.
    pub callback_policy: Arc<CallbackPolicy>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            timing: Timing::default(),
            queue_inflight: 256,
            callback_inflight: 64,
            callback_min_wait: Duration::from_millis(250),
            callback_max_wait: Duration::from_secs(60),
            callback_retry_for: Duration::from_secs(6 * 3600),
            callback_timeout: Duration::from_secs(10),
            callback_policy: Arc::new(CallbackPolicy::default()),
        }
    }
}

/// Counters of the pool since start.
#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PoolCounters {
    /// Calls completed (any final status).
    pub completed: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Calls moved to the dead-letter list.
    pub dead_lettered: u64,
    /// Callbacks delivered.
    pub callbacks_delivered: u64,
    /// Callback attempts that failed and were scheduled again.
    #[serde(default)]
    pub callbacks_retried: u64,
    /// Callbacks given up on (their results are dead letters).
    pub callbacks_failed: u64,
}

#[derive(Default)]
struct Counters {
    completed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
}

/// Runs deliveries for every named queue.
pub struct WorkerPool {
    queue: SharedQueue,
    deliver: Arc<dyn Deliver>,
    cfg: PoolConfig,
    running: Mutex<HashSet<String>>,
    gate: Arc<Gate>,
    callbacks: Callbacks,
    counters: Counters,
}

impl WorkerPool {
    /// Start dispatchers for the default queue, every queue that holds calls, and callbacks.
    pub async fn start(
        queue: SharedQueue,
        deliver: Arc<dyn Deliver>,
        cfg: PoolConfig,
    ) -> Result<Arc<WorkerPool>, QueueError> {
        let callbacks = Callbacks::new(&cfg)?;
        let pool = Arc::new(WorkerPool {
            queue: queue.clone(),
            deliver,
            cfg,
            running: Mutex::new(HashSet::new()),
            gate: Arc::new(Gate::default()),
            callbacks,
            counters: Counters::default(),
        });
        pool.ensure_queue(DEFAULT_QUEUE);
        for name in queue.known_queues().await {
            pool.ensure_queue(&name);
        }
        tokio::spawn(pool.clone().dispatch_callbacks());
        Ok(pool)
    }

    /// The pool's settings.
    pub fn config(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Make sure a dispatcher runs for queue `name`.
    pub fn ensure_queue(self: &Arc<Self>, name: &str) {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.insert(name.to_string()) {
            tracing::debug!(queue = name, "queue: starting dispatcher");
            tokio::spawn(self.clone().dispatch(name.to_string()));
        }
    }

    /// Counters since start.
    pub fn counters(&self) -> PoolCounters {
        let (delivered, retried, failed) = self.callbacks.counts();
        PoolCounters {
            completed: self.counters.completed.load(Ordering::Relaxed),
            retried: self.counters.retried.load(Ordering::Relaxed),
            dead_lettered: self.counters.dead_lettered.load(Ordering::Relaxed),
            callbacks_delivered: delivered,
            callbacks_retried: retried,
            callbacks_failed: failed,
        }
    }

    async fn dispatch(self: Arc<Self>, name: String) {
        let cap = Arc::new(Semaphore::new(self.cfg.queue_inflight.max(1)));
        loop {
            let Ok(permit) = cap.clone().acquire_owned().await else {
                return;
            };
            let d = match self.queue.receive(&name).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(queue = %name, "queue: cannot receive: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Some(settings) = self.deliver.settings(&d.call) else {
                let msg = format!("function {:?} not found", d.call.function);
                let outcome = Outcome {
                    status: 404,
                    headers: Vec::new(),
                    body: Bytes::from(msg.clone()),
                    truncated: false,
                    connection_failed: false,
                    function_error: false,
                };
                let now = self.cfg.timing.clock.now_ms();
                self.end(d, outcome, Some(msg), now, Duration::ZERO).await;
                drop(permit);
                continue;
            };
            let slot = self
                .gate
                .acquire(&d.call.function, settings.concurrency.max(1))
                .await;
            let pool = self.clone();
            tokio::spawn(async move {
                pool.handle(d, settings, slot).await;
                drop(permit);
            });
        }
    }

    async fn handle(&self, d: Delivery, settings: FunctionSettings, slot: GateSlot) {
        let start_ms = self.cfg.timing.clock.now_ms();
        let started = Instant::now();
        let outcome = self
            .queue
            .alive_during(&d.token, self.deliver.invoke(&d.call))
            .await;
        let duration = started.elapsed();
        drop(slot);
        let retry = &settings.policy.retry;
        let retryable =
            outcome.connection_failed || outcome.function_error || retry.retries(outcome.status);
        let (id, function, attempt) = (d.call.id.clone(), d.call.function.clone(), d.attempt);
        if retryable && attempt < retry.attempts {
            let wait = Backoff {
                policy: retry,
                jitter: &self.cfg.timing.jitter,
            }
            .wait(attempt);
            tracing::debug!(call = %id, %function, attempt, status = outcome.status, ?wait, "async call: retrying");
            self.counters.retried.fetch_add(1, Ordering::Relaxed);
            self.deliver.retried(&function);
            if let Err(e) = self.queue.retry(d, wait).await {
                tracing::error!(call = %id, "async call: cannot schedule the retry: {e}");
            }
            return;
        }
        let dead = retryable.then(|| {
            if outcome.connection_failed {
                format!("function unreachable after {attempt} attempt(s)")
            } else if outcome.function_error {
                format!(
                    "function error (status {}) after {attempt} attempt(s)",
                    outcome.status
                )
            } else {
                format!("status {} after {attempt} attempt(s)", outcome.status)
            }
        });
        self.end(d, outcome, dead, start_ms, duration).await;
    }

    /// End a call that is not retried: dead-letter it if `dead` says why, and keep its result
    /// for the callback if it has one (else ack it).
    async fn end(
        &self,
        d: Delivery,
        outcome: Outcome,
        dead: Option<String>,
        start_ms: u64,
        duration: Duration,
    ) {
        let (id, function) = (d.call.id.clone(), d.call.function.clone());
        let now = self.cfg.timing.clock.now_ms();
        match &dead {
            Some(reason) => {
                tracing::warn!(call = %id, %function, "async call: dead-lettered: {reason}");
                self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                self.deliver.dead_lettered(&function);
            }
            None => {
                self.counters.completed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let until = now.saturating_add(self.cfg.callback_retry_for.as_millis() as u64);
        let result = d.call.callback.clone().map(|url| CallResult {
            id: d.call.id.clone(),
            function: d.call.function.clone(),
            queue: d.call.queue.clone(),
            method: d.call.method.clone(),
            path: d.call.path.clone(),
            callback: url,
            accepted_ms: d.call.accepted_ms,
            call_attempts: d.attempt,
            status: outcome.status,
            headers: outcome.headers,
            body: outcome.body,
            truncated: outcome.truncated,
            start_ms,
            duration_us: duration.as_micros() as u64,
            give_up_ms: until,
            attempts: 0,
        });
        let ending = Ending {
            dead: dead.map(|r| (outcome.status, r)),
            result,
            now_ms: now,
        };
        if let Err(e) = self.queue.finish(d, ending).await {
            tracing::error!(call = %id, "async call: cannot settle it (it is delivered again after a restart): {e}");
        }
    }

    async fn dispatch_callbacks(self: Arc<Self>) {
        let cap = Arc::new(Semaphore::new(self.cfg.callback_inflight.max(1)));
        loop {
            let Ok(permit) = cap.clone().acquire_owned().await else {
                return;
            };
            let d = match self.queue.receive_result().await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("queue: cannot receive results for callbacks: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let pool = self.clone();
            tokio::spawn(async move {
                pool.callbacks.deliver(&pool.queue, &pool.cfg, d).await;
                drop(permit);
            });
        }
    }
}

/// Per-function in-flight counts with a waiting room.
#[derive(Default)]
struct Gate {
    counts: Mutex<HashMap<String, usize>>,
    freed: Notify,
}

struct GateSlot {
    gate: Arc<Gate>,
    function: String,
}

impl Gate {
    async fn acquire(self: &Arc<Self>, function: &str, limit: usize) -> GateSlot {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
                let n = counts.entry(function.to_string()).or_default();
                if *n < limit {
                    *n += 1;
                    return GateSlot {
                        gate: self.clone(),
                        function: function.to_string(),
                    };
                }
            }
            // Limits follow the function's replicas, so look again now and then.
            let _ = tokio::time::timeout(Duration::from_millis(500), freed).await;
        }
    }
}

impl Drop for GateSlot {
    fn drop(&mut self) {
        let mut counts = self.gate.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.function) {
            *n = n.saturating_sub(1);
        }
        drop(counts);
        self.gate.freed.notify_waiters();
    }
}
