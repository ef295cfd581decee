//! The worker pool: one dispatcher task per named queue takes due calls off it and runs each
//! delivery in its own task, within the function's concurrency (a per-function gate sized by
//! [`Deliver::settings`]) and a per-queue cap, so one busy function cannot starve other queues.
//! A delivery goes through [`Deliver::invoke`] (the gateway's sync invoke path, which scales a
//! function up from zero); a retryable answer is rescheduled with backoff, an exhausted one is
//! dead-lettered, and the final answer is POSTed to the call's callback URL, if any.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use serde::Serialize;
use tokio::sync::{Notify, Semaphore};

use crate::callback::{CallbackSender, Report};
use crate::{Backoff, Call, Delivery, FunctionPolicy, SharedQueue, Timing, DEFAULT_QUEUE};

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
    /// Response body.
    pub body: Bytes,
    /// The instance could not be reached at all.
    pub connection_failed: bool,
}

/// Delivers calls to functions: implemented by the gateway over its invoke path.
pub trait Deliver: Send + Sync + 'static {
    /// The function's settings; `None` if it does not exist (any more).
    fn settings(&self, function: &str) -> Option<FunctionSettings>;
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
    /// Attempts at delivering one callback.
    pub callback_attempts: u32,
    /// First wait between callback attempts (doubles).
    pub callback_min_wait: Duration,
    /// Time limit of one callback request.
    pub callback_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            timing: Timing::default(),
            queue_inflight: 256,
            callback_attempts: 5,
            callback_min_wait: Duration::from_millis(250),
            callback_timeout: Duration::from_secs(10),
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
    /// Callbacks given up after all their attempts.
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
    callbacks: CallbackSender,
    counters: Counters,
}

impl WorkerPool {
    /// Start dispatchers for the default queue and every queue that holds calls.
    pub async fn start(
        queue: SharedQueue,
        deliver: Arc<dyn Deliver>,
        cfg: PoolConfig,
    ) -> Arc<WorkerPool> {
        let callbacks = CallbackSender::new(&cfg);
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
        pool
    }

    /// The queue the pool works on.
    pub fn queue(&self) -> &SharedQueue {
        &self.queue
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
        let (ok, failed) = self.callbacks.counts();
        PoolCounters {
            completed: self.counters.completed.load(Ordering::Relaxed),
            retried: self.counters.retried.load(Ordering::Relaxed),
            dead_lettered: self.counters.dead_lettered.load(Ordering::Relaxed),
            callbacks_delivered: ok,
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
            let Some(settings) = self.deliver.settings(&d.call.function) else {
                let msg = format!("function {:?} not found", d.call.function);
                let outcome = Outcome {
                    status: 404,
                    headers: Vec::new(),
                    body: Bytes::from(msg.clone()),
                    connection_failed: false,
                };
                let call = d.call.clone();
                self.give_up(d, &outcome, msg).await;
                self.report(
                    call,
                    outcome,
                    self.cfg.timing.clock.now_ms(),
                    Duration::ZERO,
                );
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
        let outcome = match self.queue.keep_alive_every() {
            None => self.deliver.invoke(&d.call).await,
            Some(every) => {
                let invoke = self.deliver.invoke(&d.call);
                tokio::pin!(invoke);
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                loop {
                    tokio::select! {
                        o = &mut invoke => break o,
                        _ = tick.tick() => self.queue.keep_alive(&d).await,
                    }
                }
            }
        };
        let duration = started.elapsed();
        drop(slot);
        let retry = &settings.policy.retry;
        let retryable = outcome.connection_failed || retry.retries(outcome.status);
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
        let call = d.call.clone();
        if retryable {
            let reason = if outcome.connection_failed {
                format!("function unreachable after {attempt} attempt(s)")
            } else {
                format!("status {} after {attempt} attempt(s)", outcome.status)
            };
            self.give_up(d, &outcome, reason).await;
        } else {
            self.counters.completed.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.queue.ack(d).await {
                tracing::warn!(call = %id, "async call: ack failed (it may be delivered again): {e}");
            }
        }
        self.report(call, outcome, start_ms, duration);
    }

    async fn give_up(&self, d: Delivery, outcome: &Outcome, reason: String) {
        let id = d.call.id.clone();
        tracing::warn!(call = %id, function = %d.call.function, "async call: dead-lettered: {reason}");
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.deliver.dead_lettered(&d.call.function);
        let now = self.cfg.timing.clock.now_ms();
        if let Err(e) = self.queue.dead_letter(d, outcome.status, reason, now).await {
            tracing::error!(call = %id, "async call: cannot store the dead letter: {e}");
        }
    }

    fn report(&self, call: Call, outcome: Outcome, start_ms: u64, duration: Duration) {
        if let Some(url) = call.callback.clone() {
            self.callbacks.send(Report {
                url,
                call_id: call.id,
                function: call.function,
                outcome,
                start_ms,
                duration,
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
