//! `/system/functions`, `/system/function/{name}` and `/system/scale-function/{name}`:
//! deploy, update, list, describe, scale and delete functions. The store is written before
//! an answer says yes, so an accepted deploy survives a crash of the platform.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use virga_store::{StoreError, StoredFunction};
use virga_types::{
    validate_deployment, validate_name, validate_namespace, DeleteFunctionRequest,
    FunctionDeployment, FunctionStatus, ScaleServiceRequest, ScalingPolicy,
};

use crate::error::parse_json;
use crate::{ApiError, AppState};

fn status_of(state: &AppState, f: &StoredFunction) -> FunctionStatus {
    let name = &f.deployment.service;
    // The provider's count is the truth: a call at zero raises it without a store write.
    let (desired, ready) = state.provider.replicas(name);
    FunctionStatus::from_deployment(
        &f.deployment,
        f.created_at,
        desired,
        ready,
        state.invocation_count(name) as f64,
    )
}

/// The replica count a new deployment starts with (`com.openfaas.scale.min`, validated).
fn initial_replicas(d: &FunctionDeployment) -> Result<u64, ApiError> {
    Ok(ScalingPolicy::from_labels(d.labels.as_ref())?.min)
}

fn parse_deployment(body: &[u8]) -> Result<FunctionDeployment, ApiError> {
    let mut d: FunctionDeployment = parse_json(body)?;
    validate_deployment(&mut d)?;
    virga_queue::FunctionPolicy::from_annotations(d.annotations.as_ref())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(d)
}

/// `GET /system/functions`.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<FunctionStatus>>, ApiError> {
    let all = state.store.functions()?;
    Ok(Json(all.iter().map(|f| status_of(&state, f)).collect()))
}

/// `GET /system/function/{name}`.
pub(crate) async fn get_one(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<FunctionStatus>, ApiError> {
    let f = load(&state, &name)?;
    Ok(Json(status_of(&state, &f)))
}

/// Look up a stored function by `name` or `name.namespace`.
pub(crate) fn load(state: &AppState, name: &str) -> Result<StoredFunction, ApiError> {
    let name = split_namespace(name)?;
    state
        .store
        .function(name)?
        .ok_or_else(|| ApiError::NotFound(format!("function {name:?} not found")))
}

/// `NAME` or `NAME.NAMESPACE` → NAME, checking both parts.
pub(crate) fn split_namespace(full: &str) -> Result<&str, ApiError> {
    let (name, ns) = full.split_once('.').unwrap_or((full, ""));
    validate_name("function name", name)?;
    validate_namespace(ns)?;
    Ok(name)
}

/// `POST /system/functions`: 202 once stored; 409 if the name is taken.
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let d = parse_deployment(&body)?;
    if state.store.function(&d.service)?.is_some() {
        return Err(ApiError::Conflict(format!(
            "function {:?} already exists: update it with PUT /system/functions",
            d.service
        )));
    }
    let f = StoredFunction {
        replicas: initial_replicas(&d)?,
        deployment: d,
        created_at: Utc::now(),
    };
    state.provider.deploy(&f)?;
    if let Err(e) = state.store.create_function(&f) {
        if !matches!(e, StoreError::Exists { .. }) {
            state.provider.remove(&f.deployment.service);
        }
        return Err(e.into());
    }
    state.deployed(&f.deployment);
    tracing::info!(function = %f.deployment.service, "deployed");
    Ok(StatusCode::ACCEPTED)
}

/// `PUT /system/functions`: replace a function's definition and restart its instances.
pub(crate) async fn update(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let d = parse_deployment(&body)?;
    let old = load(&state, &d.service)?;
    let f = StoredFunction {
        deployment: d,
        created_at: old.created_at,
        replicas: old.replicas,
    };
    state.provider.deploy(&f)?;
    state.store.update_function(&f)?;
    state.deployed(&f.deployment);
    tracing::info!(function = %f.deployment.service, "updated");
    Ok(StatusCode::OK)
}

/// `DELETE /system/functions` with `{"functionName": ...}`.
pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: DeleteFunctionRequest = parse_json(&body)?;
    validate_name("functionName", &req.function_name)?;
    validate_namespace(&req.namespace)?;
    if !state.store.delete_function(&req.function_name)? {
        return Err(ApiError::NotFound(format!(
            "function {:?} not found",
            req.function_name
        )));
    }
    state.provider.remove(&req.function_name);
    state.forget(&req.function_name);
    tracing::info!(function = %req.function_name, "removed");
    Ok(StatusCode::OK)
}

/// `POST /system/scale-function/{name}` with `{"serviceName","replicas"}`.
pub(crate) async fn scale(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: ScaleServiceRequest = parse_json(&body)?;
    let mut f = load(&state, &name)?;
    if !req.service_name.is_empty() && req.service_name != f.deployment.service {
        return Err(ApiError::BadRequest(format!(
            "serviceName {:?} does not match the path's function {:?}",
            req.service_name, f.deployment.service
        )));
    }
    f.replicas = req.replicas;
    state.store.update_function(&f)?;
    state.provider.scale(&f.deployment.service, req.replicas)?;
    Ok(StatusCode::ACCEPTED)
}
