//! The data the queue stores and reports: calls, their results, dead letters and what the
//! API shows of them, the limits, and per-queue statistics.

use bytes::Bytes;
use serde::Serialize;

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

/// The final answer to a call with a callback URL, kept in the queue until the callback got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    /// The call id, sent again as `X-Call-Id`.
    pub id: String,
    /// Function name.
    pub function: String,
    /// Queue the call waited on.
    pub queue: String,
    /// The call's HTTP method.
    pub method: String,
    /// The call's extra path and query.
    pub path: String,
    /// Where to POST it.
    pub callback: String,
    /// When the call was accepted, milliseconds since the Unix epoch.
    pub accepted_ms: u64,
    /// Attempts the call took.
    pub call_attempts: u32,
    /// The function's status (or the gateway's on its behalf).
    pub status: u16,
    /// The function's response headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The function's response body (at most the async body limit).
    pub body: Bytes,
    /// The body was cut at the limit.
    pub truncated: bool,
    /// When the last attempt started, milliseconds since the Unix epoch.
    pub start_ms: u64,
    /// How long the last attempt took, in microseconds.
    pub duration_us: u64,
    /// Retry the callback until then (milliseconds since the Unix epoch), then dead-letter it.
    pub give_up_ms: u64,
    /// Callback attempts already made before this copy was stored.
    pub attempts: u32,
}

/// What a dead letter holds: a call whose attempts are exhausted, or a result whose callback
/// could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed {
    /// The call itself failed.
    Call(Call),
    /// The call was done; its callback failed.
    Callback(CallResult),
}

/// A call whose attempts are exhausted (or whose function vanished), or whose callback failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The call as last attempted, or its result.
    pub failed: Failed,
    /// Why it failed, in words.
    pub reason: String,
    /// The last status the function (or the gateway on its behalf) answered.
    pub status: u16,
    /// When it was given up, milliseconds since the Unix epoch.
    pub failed_ms: u64,
}

impl DeadLetter {
    /// The call id.
    pub fn id(&self) -> &str {
        match &self.failed {
            Failed::Call(c) => &c.id,
            Failed::Callback(r) => &r.id,
        }
    }

    /// Size of the body it holds.
    pub fn body_len(&self) -> usize {
        match &self.failed {
            Failed::Call(c) => c.body.len(),
            Failed::Callback(r) => r.body.len(),
        }
    }
}

/// What the dead-letter API shows of a dead letter (no body, no headers).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterInfo {
    /// Call id.
    pub id: String,
    /// What failed: `call` (its attempts are exhausted) or `callback` (the call was done, its
    /// result could not be delivered).
    #[serde(default = "kind_call")]
    pub kind: String,
    /// Function name.
    pub function: String,
    /// Queue name.
    pub queue: String,
    /// HTTP method.
    pub method: String,
    /// Extra path and query.
    pub path: String,
    /// Attempts made (at the call, or at its callback).
    pub attempts: u32,
    /// Last status of the function.
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
    /// Body size in bytes (the request's, or the result's for a callback).
    pub body_bytes: usize,
}

fn kind_call() -> String {
    "call".into()
}

impl From<&DeadLetter> for DeadLetterInfo {
    fn from(d: &DeadLetter) -> Self {
        let (kind, id, function, queue, method, path, attempts, callback, accepted_ms) =
            match &d.failed {
                Failed::Call(c) => (
                    "call",
                    &c.id,
                    &c.function,
                    &c.queue,
                    &c.method,
                    &c.path,
                    c.attempts,
                    c.callback.clone(),
                    c.accepted_ms,
                ),
                Failed::Callback(r) => (
                    "callback",
                    &r.id,
                    &r.function,
                    &r.queue,
                    &r.method,
                    &r.path,
                    r.attempts,
                    Some(r.callback.clone()),
                    r.accepted_ms,
                ),
            };
        DeadLetterInfo {
            id: id.clone(),
            kind: kind.into(),
            function: function.clone(),
            queue: queue.clone(),
            method: method.clone(),
            path: path.clone(),
            attempts,
            status: d.status,
            reason: d.reason.clone(),
            callback,
            accepted_ms,
            failed_ms: d.failed_ms,
            body_bytes: d.body_len(),
        }
    }
}

/// How much a queue holds at most. Calls beyond are refused ([`QueueError::Full`]); results of
/// accepted calls are never refused by the embedded queue (they replace their call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Calls and results waiting, in all.
    pub max_depth: u64,
    /// Bytes of calls and results waiting, in all.
    pub max_bytes: u64,
    /// Calls and results waiting per function.
    pub max_depth_per_function: u64,
    /// Bytes of calls and results waiting per function.
    pub max_bytes_per_function: u64,
    /// Dead letters kept; beyond, the oldest are dropped.
    pub max_dead_letters: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 1_000_000,
            max_bytes: 1 << 30,
            max_depth_per_function: 100_000,
            max_bytes_per_function: 256 << 20,
            max_dead_letters: 10_000,
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
