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
use virga_types::FunctionDeployment;

use crate::{ApiError, AppState};

/// What the invoke path keeps per deployed function.
pub(crate) struct FunctionHandle {
    /// The function's metrics.
    pub(crate) metrics: FunctionMetrics,
    /// Whether its answers get `Content-Security-Policy: sandbox` (from its annotations).
    sandbox: AtomicBool,
}

impl FunctionHandle {
    /// Whether the function's answers are sandboxed.
    pub(crate) fn sandboxed(&self) -> bool {
        self.sandbox.load(Ordering::Relaxed)
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
        // Once per function: its annotations, from the store (sandboxed if unreadable).
        let sandbox = match self.store.function(name) {
            Ok(Some(f)) => crate::invoke::sandboxed(f.deployment.annotations.as_ref()),
            _ => true,
        };
        let mut map = self
            .fn_metrics
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner());
        Some(
            map.entry(name.to_string())
                .or_insert_with(|| {
                    Arc::new(FunctionHandle {
                        metrics: self.metrics.function(name),
                        sandbox: AtomicBool::new(sandbox),
                    })
                })
                .clone(),
        )
    }

    /// A function was deployed or updated (and stored): refresh what its handle derives from it.
    pub(crate) fn deployed(&self, d: &FunctionDeployment) {
        if let Some(h) = self.fn_metrics.get(&d.service) {
            let sandbox = crate::invoke::sandboxed(d.annotations.as_ref());
            h.sandbox.store(sandbox, Ordering::Relaxed);
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
