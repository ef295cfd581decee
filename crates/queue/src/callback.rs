//! Callbacks: the result of an async call is POSTed to its `X-Callback-Url` with the function's
//! body and the OpenFaaS headers (`X-Call-Id`, `X-Function-Name`, `X-Function-Status`,
//! `X-Duration-Seconds`, `X-Start-Time`). Results wait in the queue, so a callback survives
//! restarts; a failed one (unreachable, 5xx, 408, 429) is rescheduled with exponential backoff
//! and jitter until its deadline (`--callback-retry-for`), then its result becomes a dead letter,
//! as does one the receiver refuses (another 4xx) or the address policy forbids.
//!
//! The HTTP client speaks HTTPS (rustls with the system's roots; `SSL_CERT_FILE` is honoured),
//! uses no proxy, and resolves names through [`FilteredResolver`], so it connects only where
//! the [`CallbackPolicy`] allows; redirects are followed only to allowed URLs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virga_types::headers;

use crate::addr::FilteredResolver;
use crate::worker::PoolConfig;
use crate::{Backoff, CallResult, CallbackPolicy, Queue, QueueError, ResultDelivery, RetryPolicy};

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;

/// Why a callback attempt failed.
enum Failure {
    /// Worth trying again later.
    Retry(String),
    /// Trying again would not help.
    Permanent(String),
}

/// Sends callbacks and settles their results.
pub(crate) struct Callbacks {
    http: reqwest::Client,
    policy: Arc<CallbackPolicy>,
    delivered: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
}

/// An error with its causes, which reqwest keeps in its source chain.
fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl Callbacks {
    pub(crate) fn new(cfg: &PoolConfig) -> Result<Self, QueueError> {
        let policy = cfg.callback_policy.clone();
        let redirects = policy.clone();
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(cfg.callback_timeout)
            .connect_timeout(cfg.callback_timeout.min(Duration::from_secs(5)))
            .no_proxy()
            .dns_resolver(Arc::new(FilteredResolver(policy.clone())))
            .redirect(reqwest::redirect::Policy::custom(move |a| {
                if a.previous().len() >= MAX_REDIRECTS {
                    return a.error("too many redirects");
                }
                match redirects.check_url(a.url().as_str()) {
                    Ok(_) => a.follow(),
                    Err(e) => a.error(format!("redirected to {e}")),
                }
            }))
            .build()
            .map_err(|e| {
                QueueError::Config(format!(
                    "cannot set up the HTTP client for callbacks: {}",
                    describe(&e)
                ))
            })?;
        Ok(Callbacks {
            http,
            policy,
            delivered: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// (delivered, retried, failed) callbacks so far.
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.retried.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Send `d`'s callback once, then ack, reschedule or dead-letter its result.
    pub(crate) async fn deliver(&self, queue: &Queue, cfg: &PoolConfig, d: ResultDelivery) {
        let sent = queue.alive_during(&d.token, self.post(&d.result)).await;
        let (id, url, attempt) = (d.result.id.clone(), d.result.callback.clone(), d.attempt);
        let now = cfg.timing.clock.now_ms();
        let settled = match sent {
            Ok(()) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                queue.ack_result(d).await
            }
            Err(Failure::Retry(e)) if now < d.result.give_up_ms => {
                let policy = RetryPolicy {
                    min_wait: cfg.callback_min_wait,
                    max_wait: cfg.callback_max_wait.max(cfg.callback_min_wait),
                    ..RetryPolicy::default()
                };
                let wait = Backoff {
                    policy: &policy,
                    jitter: &cfg.timing.jitter,
                }
                .wait(attempt)
                .min(Duration::from_millis(d.result.give_up_ms - now));
                tracing::debug!(call = %id, %url, attempt, ?wait, "callback failed, retrying: {e}");
                self.retried.fetch_add(1, Ordering::Relaxed);
                queue.retry_result(d, wait).await
            }
            Err(Failure::Retry(e) | Failure::Permanent(e)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let reason = format!("callback to {url} failed after {attempt} attempt(s): {e}");
                tracing::warn!(call = %id, "{reason}; the result is kept as a dead letter");
                queue.dead_letter_result(d, reason, now).await
            }
        };
        if let Err(e) = settled {
            tracing::error!(call = %id, "callback: cannot settle its result (it is sent again after a restart): {e}");
        }
    }

    async fn post(&self, r: &CallResult) -> Result<(), Failure> {
        // Checked again here: the policy may have changed since the call was accepted.
        self.policy
            .check_url(&r.callback)
            .map_err(Failure::Permanent)?;
        let mut req = self
            .http
            .post(&r.callback)
            .header(headers::X_CALL_ID, &r.id)
            .header(headers::X_FUNCTION_NAME, &r.function)
            .header(headers::X_FUNCTION_STATUS, r.status.to_string())
            .header(
                headers::X_DURATION_SECONDS,
                format!("{:.6}", r.duration_us as f64 / 1e6),
            )
            .header(
                headers::X_START_TIME,
                (u128::from(r.start_ms) * 1_000_000).to_string(),
            );
        if let Some((_, v)) = r
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("Content-Type", v.as_slice());
        }
        if r.truncated {
            req = req.header("X-Virga-Body-Truncated", "true");
        }
        let resp = match req.body(r.body.clone()).send().await {
            Ok(resp) => resp,
            Err(e) if e.is_redirect() || e.is_builder() => {
                return Err(Failure::Permanent(describe(&e)))
            }
            Err(e) => return Err(Failure::Retry(describe(&e))),
        };
        let status = resp.status();
        let again = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
        match () {
            _ if status.is_success() => Ok(()),
            _ if again => Err(Failure::Retry(format!("the receiver answered {status}"))),
            _ => Err(Failure::Permanent(format!(
                "the receiver answered {status}"
            ))),
        }
    }
}
