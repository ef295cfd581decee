//! How long a call may take, and how its request body may stream. `--upstream-timeout` bounds
//! the wait for the start of an answer, unless the function's own `exec_timeout` (its envVars
//! over its bundle's manifest; hours are fine) is longer: then that, and a moment more so the
//! watchdog's own 504 arrives first. Once the answer started, nothing of the gateway's cuts it
//! while it streams. A function annotated `virga.http.stream-request: "true"` takes streamed
//! request bodies of any size (`--max-body-bytes` does not apply: nothing holds them), which may
//! pause for as long as its call may take instead of `--body-read-timeout`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::request::Parts;
use virga_types::FunctionDeployment;

use crate::conn::PauseLimit;
use crate::replay::DrainingLimit;
use crate::{ApiError, AppState};

/// Annotation with which a function takes request bodies without the size and pause limits.
pub(crate) const STREAM_REQUEST_ANNOTATION: &str = "virga.http.stream-request";

/// What the gateway waits beyond a function's `exec_timeout`, so the watchdog's answer (504,
/// "function exceeded exec_timeout") is the one the caller gets.
const GRACE: Duration = Duration::from_secs(1);

/// The `exec_timeout` the watchdog of `d`'s instances runs with, when it sets one (an unset,
/// empty, zero or invalid value is none: the gateway's own limit then applies).
pub(crate) fn exec_timeout_of(state: &AppState, d: &FunctionDeployment) -> Option<Duration> {
    match d.env_vars.get("exec_timeout") {
        Some(v) => parse_exec(v),
        None => parse_exec(
            crate::bundles::manifest_env(state, &d.image)
                .get("exec_timeout")
                .map_or("", String::as_str),
        ),
    }
}

fn parse_exec(v: &str) -> Option<Duration> {
    virga_types::duration::parse(v)
        .ok()
        .filter(|d| !d.is_zero())
}

/// Whether `annotations` take streamed request bodies without limits.
pub(crate) fn streams_requests(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(STREAM_REQUEST_ANNOTATION))
        .is_some_and(|v| v == "true")
}

/// What one call to a function may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallLimits {
    /// Longest wait for the start of the answer.
    pub(crate) answer: Duration,
    /// The function takes request bodies without the size and pause limits.
    stream_request: bool,
}

impl CallLimits {
    /// The limits of a call to the function `key`.
    pub(crate) fn of(state: &AppState, key: &str) -> CallLimits {
        let settings = state.function_handle(key).map(|h| h.calls());
        let own = settings.as_ref().and_then(|s| s.exec_timeout);
        CallLimits {
            answer: answer_limit(state.cfg.upstream_timeout, own),
            stream_request: settings.is_some_and(|s| s.stream_request),
        }
    }

    /// The request body to forward: within `max` bytes (413 beyond, declared or streamed),
    /// unless the function takes streamed bodies; then it may also pause as long as the call
    /// may take.
    pub(crate) fn request_body(
        &self,
        parts: &Parts,
        body: Body,
        max: usize,
    ) -> Result<Body, ApiError> {
        if self.stream_request {
            if let Some(pause) = parts.extensions.get::<PauseLimit>() {
                pause.raise_to(self.answer);
            }
            return Ok(body);
        }
        Ok(match crate::invoke::declared_length(&parts.headers, max)? {
            Some(_) => body,
            None => Body::new(DrainingLimit::new(body, max)),
        })
    }
}

/// The wait for an answer: the gateway's `upstream`, or the function's `own` exec_timeout (and
/// [`GRACE`]) when that is longer.
fn answer_limit(upstream: Duration, own: Option<Duration>) -> Duration {
    own.map_or(upstream, |t| upstream.max(t.saturating_add(GRACE)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_longer_exec_timeout_wins_over_the_upstream_timeout() {
        let minute = Duration::from_secs(60);
        assert_eq!(answer_limit(minute, None), minute);
        assert_eq!(answer_limit(minute, Some(Duration::from_secs(10))), minute);
        let two_hours = Duration::from_secs(7200);
        assert_eq!(answer_limit(minute, Some(two_hours)), two_hours + GRACE);
        assert_eq!(parse_exec("2h"), Some(two_hours));
        for none in ["", " ", "0", "0s", "banana"] {
            assert_eq!(parse_exec(none), None, "{none:?}");
        }
    }
}
