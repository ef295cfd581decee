//! `GET /metrics` (no auth, as on the OpenFaaS gateway) and the per-function metric handles the
//! invoke path records into. Handles are created once per deployed function and cached by name,
//! so a call costs a map read and a few atomic operations; calls to names that are not deployed
//! are not recorded, so callers cannot grow the label set at will.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use virga_metrics::FunctionMetrics;

use crate::{ApiError, AppState};

/// Cached [`FunctionMetrics`] of the deployed functions, by name.
#[derive(Default)]
pub(crate) struct FunctionHandles {
    map: RwLock<HashMap<String, Arc<FunctionMetrics>>>,
}

impl FunctionHandles {
    /// The handles of `name`, if one is cached.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<FunctionMetrics>> {
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
    /// The metric handles of `name`, or `None` if no such function is deployed.
    pub(crate) fn function_metrics(&self, name: &str) -> Option<Arc<FunctionMetrics>> {
        if let Some(h) = self.fn_metrics.get(name) {
            return Some(h);
        }
        if !self.provider.contains(name) {
            return None;
        }
        let mut map = self
            .fn_metrics
            .map
            .write()
            .unwrap_or_else(|e| e.into_inner());
        Some(
            map.entry(name.to_string())
                .or_insert_with(|| Arc::new(self.metrics.function(name)))
                .clone(),
        )
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
