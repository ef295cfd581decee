//! `GET /metrics` (no auth, as on the OpenFaaS gateway) and the per-function handles the
//! invoke path uses: the metrics it records into and whether the function's answers are
//! sandboxed. Handles are created once per deployed function and cached by name, so a call
//! costs a map read and a few atomic operations; calls to names that are not deployed are not
//! recorded, so callers cannot grow the label set at will.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use virga_metrics::FunctionMetrics;
use virga_queue::FunctionPolicy;
use virga_types::FunctionDeployment;

use crate::{ApiError, AppState};

/// What the invoke paths keep per deployed function: its metrics, and what its definition
/// says of calls, parsed once per deployment (not per call).
pub(crate) struct FunctionHandle {
    /// The function's metrics.
    pub(crate) metrics: FunctionMetrics,
    /// Whether its answers get `Content-Security-Policy: sandbox` (from its annotations).
    sandbox: AtomicBool,
    /// Its async-call settings.
    calls: RwLock<Arc<CallSettings>>,
}

/// What a function's definition says of its async calls.
#[derive(Debug, Default)]
pub(crate) struct CallSettings {
    /// Its queue, retries and delivery cap (`com.openfaas.queue`, `com.openfaas.retry.*`, ...).
    pub(crate) policy: FunctionPolicy,
    /// The same for Lambda `Event` calls: Lambda's 3 attempts unless
    /// `com.openfaas.retry.attempts` says otherwise.
    pub(crate) lambda_policy: FunctionPolicy,
    /// Its instances' `max_inflight`, if it sets one.
    pub(crate) per_instance: Option<usize>,
    /// Whether calls need an invoker of its namespace (`virga.private: "true"`).
    pub(crate) private: bool,
    /// Its instances' `exec_timeout`, if it sets one (see `long`).
    pub(crate) exec_timeout: Option<std::time::Duration>,
    /// Whether it takes streamed request bodies without limits (see `long`).
    pub(crate) stream_request: bool,
}

/// Annotation that makes a function's calls need credentials.
pub(crate) const PRIVATE_ANNOTATION: &str = "virga.private";

/// Attempts of a Lambda `Event` call: Lambda's default of 2 retries.
const LAMBDA_ATTEMPTS: u32 = 3;

impl CallSettings {
    fn of(d: &FunctionDeployment, exec_timeout: Option<std::time::Duration>) -> CallSettings {
        // Checked at deploy; a definition stored before a check existed gets the defaults.
        let policy = FunctionPolicy::from_annotations(d.annotations.as_ref()).unwrap_or_default();
        let mut lambda_policy = policy.clone();
        let ann = d.annotations.as_ref();
        if ann.is_none_or(|a| !a.contains_key(virga_queue::ANN_RETRY_ATTEMPTS)) {
            lambda_policy.retry.attempts = LAMBDA_ATTEMPTS;
        }
        CallSettings {
            policy,
            lambda_policy,
            per_instance: virga_types::max_inflight(&d.env_vars),
            private: ann
                .and_then(|a| a.get(PRIVATE_ANNOTATION))
                .is_some_and(|v| v == "true"),
            exec_timeout,
            stream_request: crate::long::streams_requests(ann),
        }
    }
}

impl FunctionHandle {
    fn new(
        metrics: FunctionMetrics,
        d: Option<&FunctionDeployment>,
        exec_timeout: Option<std::time::Duration>,
    ) -> FunctionHandle {
        FunctionHandle {
            metrics,
            sandbox: AtomicBool::new(
                d.is_none_or(|d| crate::invoke::sandboxed(d.annotations.as_ref())),
            ),
            calls: RwLock::new(Arc::new(
                d.map(|d| CallSettings::of(d, exec_timeout))
                    .unwrap_or_default(),
            )),
        }
    }

    /// Whether the function's answers are sandboxed.
    pub(crate) fn sandboxed(&self) -> bool {
        self.sandbox.load(Ordering::Relaxed)
    }

    /// Its async-call settings.
    pub(crate) fn calls(&self) -> Arc<CallSettings> {
        self.calls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn refresh(&self, d: &FunctionDeployment, exec_timeout: Option<std::time::Duration>) {
        self.sandbox.store(
            crate::invoke::sandboxed(d.annotations.as_ref()),
            Ordering::Relaxed,
        );
        *self.calls.write().unwrap_or_else(|e| e.into_inner()) =
            Arc::new(CallSettings::of(d, exec_timeout));
    }
}

/// Cached [`FunctionHandle`]s of the deployed functions, by name.
#[derive(Default)]
pub(crate) struct FunctionHandles {
    map: RwLock<HashMap<String, Arc<FunctionHandle>>>,
}

impl FunctionHandles {
    /// The handles of `name`, if one is cached.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<FunctionHandle>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Forget a removed function's handles (its series stay until restart, as counters should).
    pub(crate) fn remove(&self, name: &str) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
}

impl AppState {
    /// The handles of `name`, or `None` if no such function is deployed.
    pub(crate) fn function_handle(&self, name: &str) -> Option<Arc<FunctionHandle>> {
        if let Some(h) = self.fn_metrics.get(name) {
            return Some(h);
        }
        if !self.provider.contains(name) {
            return None;
        }
        // Once per function (after a restart): its definition, from the store (sandboxed, with
        // default settings, if unreadable).
        let stored = self.store.function(name).ok().flatten();
        let exec_timeout = stored
            .as_ref()
            .and_then(|f| crate::long::exec_timeout_of(self, &f.deployment));
        let mut map = self
            .fn_metrics
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner());
        Some(
            map.entry(name.to_string())
                .or_insert_with(|| {
                    let d = stored.as_ref().map(|f| &f.deployment);
                    Arc::new(FunctionHandle::new(
                        self.metrics.function(name),
                        d,
                        exec_timeout,
                    ))
                })
                .clone(),
        )
    }

    /// A function was deployed or updated (and stored): refresh what its handle derives from it.
    pub(crate) fn deployed(&self, d: &FunctionDeployment) {
        if let Some(h) = self
            .fn_metrics
            .get(&virga_types::function_key(&d.service, &d.namespace))
        {
            h.refresh(d, crate::long::exec_timeout_of(self, d));
        }
    }
}

/// `GET /metrics`: the registry in Prometheus text format.
pub(crate) async fn scrape(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    crate::asyncfn::record_queue_gauges(&state).await;
    let gauges = state.provider.gauges();
    let text = state
        .metrics
        .encode(&gauges, state.logs.followers())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, virga_metrics::CONTENT_TYPE)], text).into_response())
}
