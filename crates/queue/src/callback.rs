//! Callbacks: the result of an async call is POSTed to its `X-Callback-Url` with the function's
//! body and the OpenFaaS headers (`X-Call-Id`, `X-Function-Name`, `X-Function-Status`,
//! `X-Duration-Seconds`, `X-Start-Time`). Each callback runs in its own task with its own
//! retries, so an unreachable receiver never holds up the queue; one that never answers is
//! logged and counted as failed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::worker::{Outcome, PoolConfig};

/// One result to report.
pub(crate) struct Report {
    pub(crate) url: String,
    pub(crate) call_id: String,
    pub(crate) function: String,
    pub(crate) outcome: Outcome,
    pub(crate) start_ms: u64,
    pub(crate) duration: Duration,
}

/// Sends callbacks with retries.
pub(crate) struct CallbackSender {
    http: reqwest::Client,
    attempts: u32,
    min_wait: Duration,
    delivered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl CallbackSender {
    pub(crate) fn new(cfg: &PoolConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(cfg.callback_timeout)
            .connect_timeout(cfg.callback_timeout.min(Duration::from_secs(5)))
            .build()
            .unwrap_or_default();
        CallbackSender {
            http,
            attempts: cfg.callback_attempts.max(1),
            min_wait: cfg.callback_min_wait,
            delivered: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// (delivered, failed) callbacks so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Deliver `r` in the background.
    pub(crate) fn send(&self, r: Report) {
        let http = self.http.clone();
        let (attempts, min_wait) = (self.attempts, self.min_wait);
        let (delivered, failed) = (self.delivered.clone(), self.failed.clone());
        tokio::spawn(async move {
            let mut wait = min_wait;
            let mut last = String::new();
            for attempt in 1..=attempts {
                match post(&http, &r).await {
                    Ok(()) => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => last = e,
                }
                if attempt < attempts {
                    tokio::time::sleep(wait).await;
                    wait = wait.saturating_mul(2);
                }
            }
            failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(call = %r.call_id, url = %r.url, "callback failed after {attempts} attempt(s): {last}");
        });
    }
}

async fn post(http: &reqwest::Client, r: &Report) -> Result<(), String> {
    let mut req = http
        .post(&r.url)
        .header("X-Call-Id", &r.call_id)
        .header("X-Function-Name", &r.function)
        .header("X-Function-Status", r.outcome.status.to_string())
        .header(
            "X-Duration-Seconds",
            format!("{:.6}", r.duration.as_secs_f64()),
        )
        .header(
            "X-Start-Time",
            (u128::from(r.start_ms) * 1_000_000).to_string(),
        );
    if let Some((_, v)) = r
        .outcome
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("Content-Type", v.as_slice());
    }
    let resp = req
        .body(r.outcome.body.clone())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("receiver answered {}", resp.status()))
    }
}
