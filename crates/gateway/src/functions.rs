//! `/system/functions`, `/system/function/{name}` and `/system/scale-function/{name}`:
//! deploy, update, list, describe, scale and delete functions. The store is written before
//! an answer says yes, so an accepted deploy survives a crash of the platform.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use virga_store::StoredFunction;
use virga_types::{
    validate_deployment, validate_name, validate_namespace, validate_replicas,
    DeleteFunctionRequest, FunctionDeployment, FunctionStatus, ScaleServiceRequest, ScalingPolicy,
};

use crate::error::parse_json;
use crate::images;
use crate::{ApiError, AppState};

/// `?namespace=` of a read, as faas-cli sends it; only the one namespace there is.
#[derive(Deserialize)]
pub(crate) struct NamespaceQuery {
    #[serde(default)]
    namespace: String,
}

impl NamespaceQuery {
    /// 400 for a namespace other than `openfaas-fn`, as the writes answer.
    pub(crate) fn check(&self) -> Result<(), ApiError> {
        Ok(validate_namespace(&self.namespace)?)
    }
}

fn status_of(state: &AppState, f: &StoredFunction) -> FunctionStatus {
    let name = &f.deployment.service;
    // The provider's count is the truth: a call at zero raises it without a store write.
    let (desired, ready) = state.provider.replicas(name);
    let mut status = FunctionStatus::from_deployment(
        &f.deployment,
        f.created_at,
        desired,
        ready,
        state.invocation_count(name) as f64,
    );
    // An image function shows the reference as deployed (as OpenFaaS does) and its pin.
    if let Some(reference) = &f.image_ref {
        status.image = reference.clone();
        status.pinned_image = Some(f.deployment.image.clone());
        status.image_digest = images::pinned_digest(&f.deployment.image).map(|d| d.to_string());
        status.image_pull = state.images.get().and_then(|c| c.pulls.get(name));
    }
    status
}

/// The scaling policy of a validated deployment.
fn policy(d: &FunctionDeployment) -> Result<ScalingPolicy, ApiError> {
    Ok(ScalingPolicy::from_labels(d.labels.as_ref())?)
}

fn parse_deployment(body: &[u8]) -> Result<FunctionDeployment, ApiError> {
    let mut d: FunctionDeployment = parse_json(body)?;
    validate_deployment(&mut d)?;
    virga_queue::FunctionPolicy::from_annotations(d.annotations.as_ref())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    crate::triggers::check(&d)?;
    Ok(d)
}

/// `GET /system/functions`.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Query(ns): Query<NamespaceQuery>,
) -> Result<Json<Vec<FunctionStatus>>, ApiError> {
    ns.check()?;
    let all = state.store.functions()?;
    Ok(Json(all.iter().map(|f| status_of(&state, f)).collect()))
}

/// `GET /system/function/{name}`.
pub(crate) async fn get_one(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    Query(ns): Query<NamespaceQuery>,
) -> Result<Json<FunctionStatus>, ApiError> {
    ns.check()?;
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

/// `POST /system/functions`: 202 once stored; 409 if the name is taken. The store decides
/// who gets a name (check and insert in one transaction), and only that create deploys, so
/// the definition that runs is the one that got 202.
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let mut d = parse_deployment(&body)?;
    let replicas = policy(&d)?.min;
    if state.store.function(&d.service)?.is_some() {
        return Err(exists(&d.service));
    }
    // The pull runs before the write lock (other deploys do not wait for it), holding off
    // a prune of what it pulled until the function is stored.
    let (image_ref, _pulled) = images::pin(&state, &mut d).await?;
    let _writing = state.function_writes.lock().await;
    if state.store.function(&d.service)?.is_some() {
        return Err(exists(&d.service));
    }
    let f = StoredFunction {
        replicas,
        deployment: d,
        created_at: Utc::now(),
        image_ref,
    };
    state.store.create_function(&f).map_err(|e| match e {
        virga_store::StoreError::Exists { .. } => exists(&f.deployment.service),
        e => e.into(),
    })?;
    if let Err(e) = state.provider.deploy(&f) {
        if let Err(undo) = state.store.delete_function_if(&f) {
            tracing::error!(function = %f.deployment.service, "undo a failed create: {undo}");
        }
        return Err(e.into());
    }
    state.deployed(&f.deployment);
    crate::triggers::deployed(&state, &f.deployment);
    tracing::info!(function = %f.deployment.service, "deployed");
    Ok(StatusCode::ACCEPTED)
}

fn exists(name: &str) -> ApiError {
    ApiError::Conflict(format!(
        "function {name:?} already exists: update it with PUT /system/functions"
    ))
}

/// `PUT /system/functions`: replace a function's definition and restart its instances (an
/// image reference is resolved again, so a moved tag is followed).
pub(crate) async fn update(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let mut d = parse_deployment(&body)?;
    let max = policy(&d)?.max;
    load(&state, &d.service)?;
    let (image_ref, _pulled) = images::pin(&state, &mut d).await?;
    let _writing = state.function_writes.lock().await;
    let old = load(&state, &d.service)?;
    let f = StoredFunction {
        deployment: d,
        created_at: old.created_at,
        replicas: old.replicas.min(max),
        image_ref,
    };
    state.store.update_function(&f)?;
    if let Err(e) = state.provider.deploy(&f) {
        // The old definition still runs: keep the store saying so.
        if let Err(undo) = state.store.update_function(&old) {
            tracing::error!(function = %f.deployment.service, "undo a failed update: {undo}");
        }
        return Err(e.into());
    }
    state.deployed(&f.deployment);
    crate::triggers::deployed(&state, &f.deployment);
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
    let _writing = state.function_writes.lock().await;
    if !state.store.delete_function(&req.function_name)? {
        return Err(ApiError::NotFound(format!(
            "function {:?} not found",
            req.function_name
        )));
    }
    crate::triggers::removed(&state, &req.function_name);
    state.provider.remove(&req.function_name);
    state.forget(&req.function_name);
    tracing::info!(function = %req.function_name, "removed");
    Ok(StatusCode::OK)
}

/// `POST /system/scale-function/{name}` with `{"serviceName","replicas"}`; at most the
/// function's `com.openfaas.scale.max` (and the platform's cap).
pub(crate) async fn scale(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: ScaleServiceRequest = parse_json(&body)?;
    validate_namespace(&req.namespace)?;
    let _writing = state.function_writes.lock().await;
    let mut f = load(&state, &name)?;
    if !req.service_name.is_empty() && req.service_name != f.deployment.service {
        return Err(ApiError::BadRequest(format!(
            "serviceName {:?} does not match the path's function {:?}",
            req.service_name, f.deployment.service
        )));
    }
    validate_replicas(
        &f.deployment.service,
        req.replicas,
        policy(&f.deployment)?.max,
    )?;
    set_replicas(&state, &mut f, req.replicas)?;
    Ok(StatusCode::ACCEPTED)
}

/// Store and apply a function's wanted replicas (the caller holds `function_writes`).
fn set_replicas(state: &AppState, f: &mut StoredFunction, replicas: u64) -> Result<(), ApiError> {
    f.replicas = replicas;
    state.store.update_function(f)?;
    state.provider.scale(&f.deployment.service, replicas)?;
    Ok(())
}

/// Apply one AlertManager alert for `name` (OpenFaaS's rule, [`ScalingPolicy::after_alert`]);
/// the replicas before and after, or `None` for a function that is not deployed (an alert
/// can outlive its function).
pub(crate) async fn scale_on_alert(
    state: &AppState,
    name: &str,
    firing: bool,
) -> Result<Option<(u64, u64)>, ApiError> {
    let _writing = state.function_writes.lock().await;
    let name = split_namespace(name)?;
    let Some(mut f) = state.store.function(name)? else {
        return Ok(None);
    };
    let (current, _) = state.provider.replicas(name);
    let next = policy(&f.deployment)?.after_alert(firing, current);
    if next != current {
        set_replicas(state, &mut f, next)?;
    }
    Ok(Some((current, next)))
}
