//! Durable async invocations. A call accepted on `/async-function/*` becomes a [`Call`] that is
//! durably stored in a [`Queue`] before the gateway answers 202; the [`WorkerPool`] takes calls
//! off their named queue, delivers them to the function through a [`Deliver`] implementation
//! (the gateway's sync invoke path), retries with backoff by the function's [`RetryPolicy`],
//! and moves calls whose attempts are exhausted to the dead-letter list. A call with a callback
//! URL is replaced in the queue by its [`CallResult`] (durably, before the call is acked); the
//! callback dispatcher POSTs it and retries with backoff for hours, across restarts, before it
//! dead-letters the result.
//!
//! Two backends behave the same: [`embedded`] (an append-only log with group commit in the data
//! directory) and [`nats`] (NATS JetStream, so several gateways can share one queue). Both cap
//! what they hold per function and in total ([`Limits`]).

mod addr;
mod callback;
mod codec;
pub mod embedded;
pub mod nats;
mod policy;
mod types;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

pub use addr::{is_internal, CallbackPolicy};
pub use policy::{
    Backoff, Clock, FunctionPolicy, Jitter, PolicyError, RetryPolicy, SystemClock, Timing,
    ANN_MAX_INFLIGHT, ANN_QUEUE, ANN_RETRY_ATTEMPTS, ANN_RETRY_CODES, ANN_RETRY_MAX_WAIT,
    ANN_RETRY_MIN_WAIT, DEFAULT_QUEUE,
};
pub use types::{Call, CallResult, DeadLetter, DeadLetterInfo, Failed, Limits, QueueStats};
pub use worker::{Deliver, FunctionSettings, Outcome, PoolConfig, PoolCounters, WorkerPool};

/// Everything the queue can fail with.
#[derive(Debug, Error)]
pub enum QueueError {
    /// Disk I/O of the embedded log failed.
    #[error("queue storage: {0}")]
    Io(#[from] std::io::Error),
    /// A stored record could not be read.
    #[error("queue record is corrupt: {0}")]
    Corrupt(String),
    /// The NATS server refused or could not be reached.
    #[error("NATS: {0}")]
    Nats(String),
    /// The queue is shutting down.
    #[error("the queue is closed")]
    Closed,
    /// A limit is reached: the call is refused (429).
    #[error("{0}")]
    Full(String),
    /// The call is larger than the backend can store (413).
    #[error("{0}")]
    TooLarge(String),
    /// The queue or its workers cannot be set up as configured.
    #[error("{0}")]
    Config(String),
}

/// A call handed to a worker; settle it with [`Queue::retry`] or [`Queue::finish`].
#[derive(Debug)]
pub struct Delivery {
    /// The call.
    pub call: Call,
    /// This attempt's number, from 1.
    pub attempt: u32,
    token: Token,
}

/// A result handed to the callback dispatcher; settle it with ack, retry or dead-letter.
#[derive(Debug)]
pub struct ResultDelivery {
    /// The result.
    pub result: CallResult,
    /// This callback attempt's number, from 1.
    pub attempt: u32,
    token: Token,
}

#[derive(Debug)]
enum Token {
    Embedded(u64),
    Nats(Box<async_nats::jetstream::Message>),
}

/// How a delivered call that is not retried ends. The dead letter is stored first, then the
/// result replaces the call (or the call is acked), each durably.
#[derive(Debug, Default)]
pub struct Ending {
    /// Dead-letter the call: its last status and why.
    pub dead: Option<(u16, String)>,
    /// Keep its result for the callback.
    pub result: Option<CallResult>,
    /// Now, milliseconds since the Unix epoch.
    pub now_ms: u64,
}

/// The durable queue: the embedded log or NATS JetStream, with one behaviour.
pub enum Queue {
    /// Append-only log in the data directory.
    Embedded(Box<embedded::Embedded>),
    /// NATS JetStream.
    Nats(Box<nats::Nats>),
}

fn wrong_backend() -> QueueError {
    QueueError::Corrupt("delivery from another backend".into())
}

impl Queue {
    /// Store `call` durably; returns once it is safe from a crash ([`QueueError::Full`] when a
    /// limit is reached).
    pub async fn enqueue(&self, call: Call) -> Result<(), QueueError> {
        match self {
            Queue::Embedded(q) => q.enqueue(call, true).await,
            Queue::Nats(q) => q.enqueue(call).await,
        }
    }

    /// Store `call` durably like [`Queue::enqueue`]; a queue shared by several gateways
    /// (JetStream) keeps only the first call with `key` within its duplicate window (two
    /// gateways firing one schedule). The embedded queue has one gateway: it stores the call.
    pub async fn enqueue_once(&self, call: Call, key: &str) -> Result<(), QueueError> {
        match self {
            Queue::Embedded(q) => q.enqueue(call, true).await,
            Queue::Nats(q) => q.enqueue_keyed(call, Some(key)).await,
        }
    }

    /// Store `call` straight as a dead letter (it could not be queued, e.g. too large).
    pub async fn dead_letter_call(
        &self,
        call: Call,
        status: u16,
        reason: String,
    ) -> Result<(), QueueError> {
        let d = DeadLetter {
            failed: Failed::Call(call),
            reason,
            status,
            failed_ms: unix_ms(),
        };
        match self {
            Queue::Embedded(q) => q.store_dead(d).await,
            Queue::Nats(q) => q.store_dead(&d).await,
        }
    }

    /// Wait for the next due call on `queue`.
    pub async fn receive(&self, queue: &str) -> Result<Delivery, QueueError> {
        match self {
            Queue::Embedded(q) => q.receive(queue).await,
            Queue::Nats(q) => q.receive(queue).await,
        }
    }

    /// The call is done and nothing is kept of it.
    pub async fn ack(&self, d: Delivery) -> Result<(), QueueError> {
        self.finish(d, Ending::default()).await
    }

    /// Tell the backend a long delivery is still going (NATS would hand it out again).
    pub async fn keep_alive(&self, d: &Delivery) {
        self.progress(&d.token).await;
    }

    async fn progress(&self, token: &Token) {
        if let (Queue::Nats(q), Token::Nats(m)) = (self, token) {
            q.progress(m).await;
        }
    }

    /// Run `work`, telling the backend as often as it needs that the delivery of `token` goes on.
    pub(crate) async fn alive_during<T>(
        &self,
        token: &Token,
        work: impl std::future::Future<Output = T>,
    ) -> T {
        let Some(every) = self.keep_alive_every() else {
            return work.await;
        };
        tokio::pin!(work);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                o = &mut work => return o,
                _ = tick.tick() => self.progress(token).await,
            }
        }
    }

    /// How often [`Queue::keep_alive`] must be called during a delivery, if at all.
    pub fn keep_alive_every(&self) -> Option<Duration> {
        match self {
            Queue::Embedded(_) => None,
            Queue::Nats(q) => Some(q.progress_every()),
        }
    }

    /// Deliver the call again after `delay`, as attempt `d.attempt + 1`.
    pub async fn retry(&self, d: Delivery, delay: Duration) -> Result<(), QueueError> {
        match (self, d.token) {
            (Queue::Embedded(q), Token::Embedded(seq)) => {
                let mut call = d.call;
                call.attempts = d.attempt;
                q.reschedule(seq, call, delay).await
            }
            (Queue::Nats(q), Token::Nats(m)) => q.retry(&m, delay).await,
            _ => Err(wrong_backend()),
        }
    }

    /// End a delivered call: dead-letter it and/or keep its result, durably, then drop it.
    pub async fn finish(&self, d: Delivery, ending: Ending) -> Result<(), QueueError> {
        let dead = ending.dead.map(|(status, reason)| {
            let mut call = d.call.clone();
            call.attempts = d.attempt;
            DeadLetter {
                failed: Failed::Call(call),
                reason,
                status,
                failed_ms: ending.now_ms,
            }
        });
        match (self, d.token) {
            (Queue::Embedded(q), Token::Embedded(seq)) => {
                q.finish(&d.call.queue, seq, dead, ending.result).await
            }
            (Queue::Nats(q), Token::Nats(m)) => q.finish(&m, dead, ending.result).await,
            _ => Err(wrong_backend()),
        }
    }

    /// Move the call to the dead-letter list.
    pub async fn dead_letter(
        &self,
        d: Delivery,
        status: u16,
        reason: String,
        now_ms: u64,
    ) -> Result<(), QueueError> {
        let ending = Ending {
            dead: Some((status, reason)),
            result: None,
            now_ms,
        };
        self.finish(d, ending).await
    }

    /// Wait for the next result whose callback is due.
    pub async fn receive_result(&self) -> Result<ResultDelivery, QueueError> {
        match self {
            Queue::Embedded(q) => q.receive_result().await,
            Queue::Nats(q) => q.receive_result().await,
        }
    }

    /// The callback was delivered: forget the result.
    pub async fn ack_result(&self, d: ResultDelivery) -> Result<(), QueueError> {
        match (self, d.token) {
            (Queue::Embedded(q), Token::Embedded(seq)) => {
                q.ack_result(seq);
                Ok(())
            }
            (Queue::Nats(q), Token::Nats(m)) => q.ack(&m).await,
            _ => Err(wrong_backend()),
        }
    }

    /// Send the callback again after `delay`.
    pub async fn retry_result(&self, d: ResultDelivery, delay: Duration) -> Result<(), QueueError> {
        match (self, d.token) {
            (Queue::Embedded(q), Token::Embedded(seq)) => {
                let mut result = d.result;
                result.attempts = d.attempt;
                q.reschedule_result(seq, result, delay).await
            }
            (Queue::Nats(q), Token::Nats(m)) => q.retry(&m, delay).await,
            _ => Err(wrong_backend()),
        }
    }

    /// Give up on the callback: the result becomes a dead letter.
    pub async fn dead_letter_result(
        &self,
        d: ResultDelivery,
        reason: String,
        now_ms: u64,
    ) -> Result<(), QueueError> {
        let mut result = d.result;
        result.attempts = d.attempt;
        let dead = DeadLetter {
            status: result.status,
            failed: Failed::Callback(result),
            reason,
            failed_ms: now_ms,
        };
        match (self, d.token) {
            (Queue::Embedded(q), Token::Embedded(seq)) => q.dead_letter_result(seq, dead).await,
            (Queue::Nats(q), Token::Nats(m)) => q.dead_letter(&m, dead).await,
            _ => Err(wrong_backend()),
        }
    }

    /// Every dead letter, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetterInfo>, QueueError> {
        match self {
            Queue::Embedded(q) => Ok(q.dead_letters().await),
            Queue::Nats(q) => q.dead_letters().await,
        }
    }

    /// Put the dead letter `id` back: a call on its queue, a result on the callbacks (retried
    /// until `callback_until_ms`); attempts reset. False if unknown.
    pub async fn retry_dead_letter(
        &self,
        id: &str,
        now_ms: u64,
        callback_until_ms: u64,
    ) -> Result<bool, QueueError> {
        match self {
            Queue::Embedded(q) => q.retry_dead_letter(id, now_ms, callback_until_ms).await,
            Queue::Nats(q) => q.retry_dead_letter(id, now_ms, callback_until_ms).await,
        }
    }

    /// Drop every dead letter; returns how many there were.
    pub async fn purge_dead_letters(&self) -> Result<usize, QueueError> {
        match self {
            Queue::Embedded(q) => q.purge_dead_letters().await,
            Queue::Nats(q) => q.purge_dead_letters().await,
        }
    }

    /// Names of the queues that hold calls (for workers to start on).
    pub async fn known_queues(&self) -> Vec<String> {
        match self {
            Queue::Embedded(q) => q.known_queues(),
            Queue::Nats(q) => q.known_queues().await,
        }
    }

    /// Depth, in-flight and dead letters per queue, sorted by name.
    pub async fn stats(&self) -> Result<Vec<QueueStats>, QueueError> {
        let mut stats = match self {
            Queue::Embedded(q) => q.stats(),
            Queue::Nats(q) => q.stats().await?,
        };
        for d in self.dead_letters().await? {
            match stats.iter_mut().find(|s| s.queue == d.queue) {
                Some(s) => s.dead += 1,
                None => stats.push(QueueStats {
                    queue: d.queue.clone(),
                    dead: 1,
                    ..QueueStats::default()
                }),
            }
        }
        stats.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(stats)
    }

    /// Results waiting for their callback (`depth`) and being sent (`inflight`).
    pub async fn callback_stats(&self) -> Result<QueueStats, QueueError> {
        match self {
            Queue::Embedded(q) => Ok(q.callback_stats()),
            Queue::Nats(q) => q.callback_stats().await,
        }
    }

    /// The largest encoded call or result the backend stores, if it has a limit of its own
    /// (NATS: the server's `max_payload`, less room for the dead-letter envelope).
    pub fn max_message_bytes(&self) -> Option<usize> {
        match self {
            Queue::Embedded(_) => None,
            Queue::Nats(q) => Some(q.max_message_bytes()),
        }
    }

    /// Which backend this is, for logs: `embedded` or `nats`.
    pub fn backend(&self) -> &'static str {
        match self {
            Queue::Embedded(_) => "embedded",
            Queue::Nats(_) => "nats",
        }
    }
}

/// A shared queue handle.
pub type SharedQueue = Arc<Queue>;

/// Milliseconds since the Unix epoch by the system clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
