//! Durable async invocations. A call accepted on `/async-function/*` becomes a [`Call`] that is
//! durably stored in a [`Queue`] before the gateway answers 202; the [`WorkerPool`] takes calls
//! off their named queue, delivers them to the function through a [`Deliver`] implementation
//! (the gateway's sync invoke path), retries with backoff by the function's [`RetryPolicy`],
//! POSTs the result to the call's callback URL, and moves calls whose attempts are exhausted to
//! the dead-letter list.
//!
//! Two backends behave the same: [`embedded`] (an append-only log with group commit in the data
//! directory) and [`nats`] (NATS JetStream, so several gateways can share one queue).

mod callback;
mod codec;
pub mod embedded;
pub mod nats;
mod policy;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use thiserror::Error;

pub use policy::{
    Backoff, Clock, FunctionPolicy, Jitter, PolicyError, RetryPolicy, SystemClock, Timing,
    ANN_MAX_INFLIGHT, ANN_QUEUE, ANN_RETRY_ATTEMPTS, ANN_RETRY_CODES, ANN_RETRY_MAX_WAIT,
    ANN_RETRY_MIN_WAIT, DEFAULT_QUEUE,
};
pub use worker::{Deliver, FunctionSettings, Outcome, PoolConfig, PoolCounters, WorkerPool};

/// One accepted asynchronous call, as stored in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The call id (`X-Call-Id`), caller-supplied or generated.
    pub id: String,
    /// Function name (without namespace).
    pub function: String,
    /// Queue the call waits on.
    pub queue: String,
    /// HTTP method.
    pub method: String,
    /// Extra path after the function name, with the query: `/a/b?x=1`.
    pub path: String,
    /// Request headers (hop-by-hop ones removed).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Request body.
    pub body: Bytes,
    /// Where to POST the result, if anywhere.
    pub callback: Option<String>,
    /// When it was accepted, milliseconds since the Unix epoch.
    pub accepted_ms: u64,
    /// Attempts already made before this copy was stored.
    pub attempts: u32,
}

/// A call whose attempts are exhausted (or whose function vanished).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The call as last attempted.
    pub call: Call,
    /// Why it failed, in words.
    pub reason: String,
    /// The last status the function (or the gateway on its behalf) answered.
    pub status: u16,
    /// When it was given up, milliseconds since the Unix epoch.
    pub failed_ms: u64,
}

/// What the dead-letter API shows of a dead letter (no body, no headers).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterInfo {
    /// Call id.
    pub id: String,
    /// Function name.
    pub function: String,
    /// Queue name.
    pub queue: String,
    /// HTTP method.
    pub method: String,
    /// Extra path and query.
    pub path: String,
    /// Attempts made.
    pub attempts: u32,
    /// Last status.
    pub status: u16,
    /// Why it failed.
    pub reason: String,
    /// Callback URL, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<String>,
    /// Milliseconds since the Unix epoch when it was accepted.
    pub accepted_ms: u64,
    /// Milliseconds since the Unix epoch when it was given up.
    pub failed_ms: u64,
    /// Body size in bytes.
    pub body_bytes: usize,
}

impl From<&DeadLetter> for DeadLetterInfo {
    fn from(d: &DeadLetter) -> Self {
        DeadLetterInfo {
            id: d.call.id.clone(),
            function: d.call.function.clone(),
            queue: d.call.queue.clone(),
            method: d.call.method.clone(),
            path: d.call.path.clone(),
            attempts: d.call.attempts,
            status: d.status,
            reason: d.reason.clone(),
            callback: d.call.callback.clone(),
            accepted_ms: d.call.accepted_ms,
            failed_ms: d.failed_ms,
            body_bytes: d.call.body.len(),
        }
    }
}

/// Depth, in-flight and dead letters of one queue.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Calls waiting (due now or waiting for a retry).
    pub depth: u64,
    /// Calls being delivered.
    pub inflight: u64,
    /// Dead letters from this queue.
    pub dead: u64,
}

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
}

/// A call handed to a worker; settle it with ack, retry or dead-letter.
#[derive(Debug)]
pub struct Delivery {
    /// The call.
    pub call: Call,
    /// This attempt's number, from 1.
    pub attempt: u32,
    token: Token,
}

#[derive(Debug)]
enum Token {
    Embedded(u64),
    Nats(Box<async_nats::jetstream::Message>),
}

/// The durable queue: the embedded log or NATS JetStream, with one behaviour.
pub enum Queue {
    /// Append-only log in the data directory.
    Embedded(embedded::Embedded),
    /// NATS JetStream.
    Nats(Box<nats::Nats>),
}

impl Queue {
    /// Store `call` durably; returns once it is safe from a crash.
    pub async fn enqueue(&self, call: Call) -> Result<(), QueueError> {
        match self {
            Queue::Embedded(q) => q.enqueue(call).await,
            Queue::Nats(q) => q.enqueue(call).await,
        }
    }

    /// Wait for the next due call on `queue`.
    pub async fn receive(&self, queue: &str) -> Result<Delivery, QueueError> {
        match self {
            Queue::Embedded(q) => q.receive(queue).await,
            Queue::Nats(q) => q.receive(queue).await,
        }
    }

    /// The call is done: forget it.
    pub async fn ack(&self, d: Delivery) -> Result<(), QueueError> {
        match (self, d.token) {
            (Queue::Embedded(q), Token::Embedded(seq)) => q.ack(&d.call.queue, seq).await,
            (Queue::Nats(q), Token::Nats(m)) => q.ack(&m).await,
            _ => Err(QueueError::Corrupt("delivery from another backend".into())),
        }
    }

    /// Tell the backend a long delivery is still going (NATS would hand it out again).
    pub async fn keep_alive(&self, d: &Delivery) {
        if let (Queue::Nats(q), Token::Nats(m)) = (self, &d.token) {
            q.progress(m).await;
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
            _ => Err(QueueError::Corrupt("delivery from another backend".into())),
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
        let mut call = d.call;
        call.attempts = d.attempt;
        let dead = DeadLetter {
            call,
            reason,
            status,
            failed_ms: now_ms,
        };
        match (self, d.token) {
            (Queue::Embedded(q), Token::Embedded(seq)) => q.dead_letter(seq, dead).await,
            (Queue::Nats(q), Token::Nats(m)) => q.dead_letter(&m, dead).await,
            _ => Err(QueueError::Corrupt("delivery from another backend".into())),
        }
    }

    /// Every dead letter, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        match self {
            Queue::Embedded(q) => Ok(q.dead_letters().await),
            Queue::Nats(q) => q.dead_letters().await,
        }
    }

    /// Put the dead letter `id` back on its queue (attempts reset); false if unknown.
    pub async fn retry_dead_letter(&self, id: &str, now_ms: u64) -> Result<bool, QueueError> {
        match self {
            Queue::Embedded(q) => q.retry_dead_letter(id, now_ms).await,
            Queue::Nats(q) => q.retry_dead_letter(id, now_ms).await,
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
            match stats.iter_mut().find(|s| s.queue == d.call.queue) {
                Some(s) => s.dead += 1,
                None => stats.push(QueueStats {
                    queue: d.call.queue.clone(),
                    dead: 1,
                    ..QueueStats::default()
                }),
            }
        }
        stats.sort_by(|a, b| a.queue.cmp(&b.queue));
        Ok(stats)
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
