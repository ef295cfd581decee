//! Per-function async settings read from OpenFaaS annotations: the retry policy
//! (`com.openfaas.retry.*`), the named queue (`com.openfaas.queue`) and Virga's per-function
//! concurrency cap; plus exponential backoff with jitter. The clock and the jitter source are
//! injectable ([`Timing`]) so backoff and delayed delivery can be tested without sleeping.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

/// Annotation: how many attempts a call gets, in all.
pub const ANN_RETRY_ATTEMPTS: &str = "com.openfaas.retry.attempts";
/// Annotation: comma-separated status codes that are retried.
pub const ANN_RETRY_CODES: &str = "com.openfaas.retry.codes";
/// Annotation: the first backoff (Go duration, e.g. `500ms`, `5s`).
pub const ANN_RETRY_MIN_WAIT: &str = "com.openfaas.retry.min_wait";
/// Annotation: the longest backoff.
pub const ANN_RETRY_MAX_WAIT: &str = "com.openfaas.retry.max_wait";
/// Annotation: the named queue of the function's async calls.
pub const ANN_QUEUE: &str = "com.openfaas.queue";
/// Annotation: most async calls of this function delivered at once.
pub const ANN_MAX_INFLIGHT: &str = "com.virga.async.max_inflight";
/// The queue of functions without `com.openfaas.queue`.
pub const DEFAULT_QUEUE: &str = "default";

/// An annotation with a value that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("annotations: {annotation}: {reason}")]
pub struct PolicyError {
    /// The annotation's name.
    pub annotation: String,
    /// What is wrong with its value.
    pub reason: String,
}

fn bad(annotation: &str, reason: String) -> PolicyError {
    PolicyError {
        annotation: annotation.to_string(),
        reason,
    }
}

/// When and how often a call is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Statuses that are retried (a connection failure always is).
    pub codes: Vec<u16>,
    /// First backoff.
    pub min_wait: Duration,
    /// Longest backoff.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 10,
            codes: vec![429, 502, 503, 504],
            min_wait: Duration::from_millis(500),
            max_wait: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Whether `status` is retried.
    pub fn retries(&self, status: u16) -> bool {
        self.codes.contains(&status)
    }

    /// Backoff before attempt `attempt + 1`, after `attempt` (from 1) failed; `jitter` in [0, 1).
    /// The wait doubles from `min_wait` up to `max_wait`; jitter picks a point in its upper half.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let base = self
            .min_wait
            .saturating_mul(1u32 << exp)
            .min(self.max_wait)
            .max(self.min_wait.min(self.max_wait));
        let half = base / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// A function's async settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionPolicy {
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Queue name.
    pub queue: String,
    /// Per-function cap on concurrent deliveries.
    pub max_inflight: Option<usize>,
}

impl Default for FunctionPolicy {
    fn default() -> Self {
        FunctionPolicy {
            retry: RetryPolicy::default(),
            queue: DEFAULT_QUEUE.to_string(),
            max_inflight: None,
        }
    }
}

impl FunctionPolicy {
    /// Read the settings from a deployment's annotations; errors name the annotation.
    pub fn from_annotations(
        ann: Option<&BTreeMap<String, String>>,
    ) -> Result<FunctionPolicy, PolicyError> {
        let mut p = FunctionPolicy::default();
        let Some(ann) = ann else { return Ok(p) };
        let get = |k: &str| ann.get(k).map(|v| v.trim());
        if let Some(v) = get(ANN_RETRY_ATTEMPTS) {
            p.retry.attempts = match v.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    return Err(bad(
                        ANN_RETRY_ATTEMPTS,
                        format!("{v:?} is not a whole number from 1 to 1000"),
                    ))
                }
            };
        }
        if let Some(v) = get(ANN_RETRY_CODES) {
            let mut codes = Vec::new();
            for c in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                match c.parse::<u16>() {
                    Ok(n) if (100..=599).contains(&n) => codes.push(n),
                    _ => {
                        return Err(bad(
                            ANN_RETRY_CODES,
                            format!("{c:?} is not an HTTP status code (expected e.g. 429,502,503)"),
                        ))
                    }
                }
            }
            p.retry.codes = codes;
        }
        if let Some(v) = get(ANN_RETRY_MIN_WAIT) {
            p.retry.min_wait =
                virga_types::duration::parse(v).map_err(|r| bad(ANN_RETRY_MIN_WAIT, r))?;
        }
        if let Some(v) = get(ANN_RETRY_MAX_WAIT) {
            p.retry.max_wait =
                virga_types::duration::parse(v).map_err(|r| bad(ANN_RETRY_MAX_WAIT, r))?;
        }
        if p.retry.max_wait < p.retry.min_wait {
            return Err(bad(
                ANN_RETRY_MAX_WAIT,
                format!(
                    "{:?} is shorter than {ANN_RETRY_MIN_WAIT} ({:?})",
                    p.retry.max_wait, p.retry.min_wait
                ),
            ));
        }
        if let Some(v) = get(ANN_QUEUE) {
            validate_queue_name(v).map_err(|r| bad(ANN_QUEUE, r))?;
            p.queue = v.to_string();
        }
        if let Some(v) = get(ANN_MAX_INFLIGHT) {
            p.max_inflight = match v.parse::<usize>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    return Err(bad(
                        ANN_MAX_INFLIGHT,
                        format!("{v:?} is not a whole number of at least 1"),
                    ))
                }
            };
        }
        Ok(p)
    }
}

/// A queue name: 1-64 of `a-z A-Z 0-9 - _` (it becomes a NATS subject token and a file name).
pub fn validate_queue_name(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a queue name: use 1-64 letters, digits, '-' or '_'"
        ))
    }
}

/// A source of the current time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Now.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::unix_ms()
    }
}

/// A source of jitter in [0, 1).
pub type Jitter = Arc<dyn Fn() -> f64 + Send + Sync>;

/// The clock and jitter the queue and workers use.
#[derive(Clone)]
pub struct Timing {
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Jitter source.
    pub jitter: Jitter,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            clock: Arc::new(SystemClock),
            jitter: Arc::new(rand::random::<f64>),
        }
    }
}

/// A policy with its jitter: computes each retry's wait.
pub struct Backoff<'a> {
    /// The policy.
    pub policy: &'a RetryPolicy,
    /// The jitter source.
    pub jitter: &'a Jitter,
}

impl Backoff<'_> {
    /// The wait after attempt `attempt` (from 1) failed.
    pub fn wait(&self, attempt: u32) -> Duration {
        self.policy.backoff(attempt, (self.jitter)())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_the_openfaas_annotations() {
        let a = ann(&[
            (ANN_RETRY_ATTEMPTS, "4"),
            (ANN_RETRY_CODES, "429, 503"),
            (ANN_RETRY_MIN_WAIT, "100ms"),
            (ANN_RETRY_MAX_WAIT, "1m30s"),
            (ANN_QUEUE, "slow-queue"),
            (ANN_MAX_INFLIGHT, "3"),
        ]);
        let p = FunctionPolicy::from_annotations(Some(&a)).unwrap();
        assert_eq!(p.retry.attempts, 4);
        assert_eq!(p.retry.codes, vec![429, 503]);
        assert_eq!(p.retry.min_wait, Duration::from_millis(100));
        assert_eq!(p.retry.max_wait, Duration::from_secs(90));
        assert_eq!(p.queue, "slow-queue");
        assert_eq!(p.max_inflight, Some(3));
        assert_eq!(
            FunctionPolicy::from_annotations(None).unwrap(),
            FunctionPolicy::default()
        );
    }

    #[test]
    fn invalid_values_name_the_annotation() {
        for (k, v) in [
            (ANN_RETRY_ATTEMPTS, "zero"),
            (ANN_RETRY_ATTEMPTS, "0"),
            (ANN_RETRY_CODES, "429,abc"),
            (ANN_RETRY_MIN_WAIT, "5 parsecs"),
            (ANN_RETRY_MAX_WAIT, "1x"),
            (ANN_QUEUE, "bad queue"),
            (ANN_MAX_INFLIGHT, "0"),
        ] {
            let e = FunctionPolicy::from_annotations(Some(&ann(&[(k, v)]))).unwrap_err();
            assert_eq!(e.annotation, k, "{e}");
            assert!(e.to_string().contains(k));
        }
        let e = FunctionPolicy::from_annotations(Some(&ann(&[
            (ANN_RETRY_MIN_WAIT, "10s"),
            (ANN_RETRY_MAX_WAIT, "1s"),
        ])))
        .unwrap_err();
        assert_eq!(e.annotation, ANN_RETRY_MAX_WAIT);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let p = RetryPolicy {
            min_wait: Duration::from_millis(100),
            max_wait: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        // No jitter: half the base; full jitter: the whole base.
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(p.backoff(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.backoff(3, 0.5), Duration::from_millis(300));
        assert_eq!(p.backoff(10, 1.0), Duration::from_millis(1000));
        assert_eq!(p.backoff(100, 1.0), Duration::from_millis(1000));
        let jitter: Jitter = Arc::new(|| 0.5);
        let b = Backoff {
            policy: &p,
            jitter: &jitter,
        };
        assert_eq!(b.wait(2), Duration::from_millis(150));
    }
}
