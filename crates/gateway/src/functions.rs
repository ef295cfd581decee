//! `/system/functions`, `/system/function/{name}` and `/system/scale-function/{name}`:
//! deploy, update, list, describe, scale and delete functions. The store is written before
//! an answer says yes, so an accepted deploy survives a crash of the platform.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use chrono::Utc;
use virga_store::StoredFunction;
use virga_types::{
    function_key, validate_deployment, validate_name, validate_replicas, DeleteFunctionRequest,
    FunctionDeployment, FunctionStatus, ScaleServiceRequest, ScalingPolicy,
};

use crate::error::parse_json;
use crate::namespaces::{resolve, split_target, NamespaceQuery};
use crate::{images, quota};
use crate::{ApiError, AppState, Need, Principal};

fn status_of(state: &AppState, f: &StoredFunction) -> FunctionStatus {
    let name = &f.key();
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

/// `GET /system/functions?namespace=`: the functions of one namespace (the default one
/// unless named), as OpenFaaS lists them.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Json<Vec<FunctionStatus>>, ApiError> {
    let ns = resolve(&state, &who, Need::Read, &q.namespace)?;
    let all = state.store.functions()?;
    Ok(Json(
        all.iter()
            .filter(|f| f.deployment.namespace == ns)
            .map(|f| status_of(&state, f))
            .collect(),
    ))
}

/// `GET /system/function/{name}[?namespace=]`.
pub(crate) async fn get_one(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Json<FunctionStatus>, ApiError> {
    let f = load(&state, &who, Need::Read, &name, &q.namespace)?;
    Ok(Json(status_of(&state, &f)))
}

/// Look up a stored function by `name` or `name.namespace` (or `name` and a `?namespace=`),
/// for a caller about to do `need` with it.
pub(crate) fn load(
    state: &AppState,
    who: &Principal,
    need: Need,
    full: &str,
    query_ns: &str,
) -> Result<StoredFunction, ApiError> {
    let (name, ns) = split_target(full, query_ns)?;
    validate_name("function name", name)?;
    let ns = resolve(state, who, need, ns)?;
    stored(state, name, &ns)
}

/// The stored function `name` of namespace `ns` (which exists), or 404.
fn stored(state: &AppState, name: &str, ns: &str) -> Result<StoredFunction, ApiError> {
    state
        .store
        .function(&function_key(name, ns))?
        .ok_or_else(|| {
            ApiError::NotFound(format!("function {name:?} not found in namespace {ns:?}"))
        })
}

/// `POST /system/functions`: 202 once stored; 409 if the name is taken. The store decides
/// who gets a name (check and insert in one transaction), and only that create deploys, so
/// the definition that runs is the one that got 202.
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let mut d = parse_deployment(&body)?;
    d.namespace = resolve(&state, &who, Need::Deploy, &d.namespace)?;
    let key = function_key(&d.service, &d.namespace);
    let replicas = policy(&d)?.min;
    if state.store.function(&key)?.is_some() {
        return Err(exists(&d.service));
    }
    quota::check_deploy(&state, &d, replicas, None)?;
    // The pull runs before the write lock (other deploys do not wait for it), holding off
    // a prune of what it pulled until the function is stored.
    let (image_ref, _pulled) = images::pin(&state, &mut d).await?;
    let _writing = state.function_writes.lock().await;
    if state.store.function(&key)?.is_some() {
        return Err(exists(&d.service));
    }
    quota::check_deploy(&state, &d, replicas, None)?;
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
            tracing::error!(function = %key, "undo a failed create: {undo}");
        }
        return Err(e.into());
    }
    state.deployed(&f.deployment);
    crate::triggers::deployed(&state, &f.deployment);
    tracing::info!(function = %key, "deployed");
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
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let mut d = parse_deployment(&body)?;
    d.namespace = resolve(&state, &who, Need::Deploy, &d.namespace)?;
    let max = policy(&d)?.max;
    let old = stored(&state, &d.service, &d.namespace)?;
    quota::check_deploy(&state, &d, old.replicas.min(max), Some(&old))?;
    let (image_ref, _pulled) = images::pin(&state, &mut d).await?;
    let _writing = state.function_writes.lock().await;
    let old = stored(&state, &d.service, &d.namespace)?;
    quota::check_deploy(&state, &d, old.replicas.min(max), Some(&old))?;
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
            tracing::error!(function = %f.key(), "undo a failed update: {undo}");
        }
        return Err(e.into());
    }
    state.deployed(&f.deployment);
    crate::triggers::deployed(&state, &f.deployment);
    tracing::info!(function = %f.key(), "updated");
    Ok(StatusCode::OK)
}

/// `DELETE /system/functions` with `{"functionName": ...}`.
pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: DeleteFunctionRequest = parse_json(&body)?;
    validate_name("functionName", &req.function_name)?;
    let ns = resolve(&state, &who, Need::Deploy, &req.namespace)?;
    let key = function_key(&req.function_name, &ns);
    let _writing = state.function_writes.lock().await;
    if !state.store.delete_function(&key)? {
        return Err(ApiError::NotFound(format!(
            "function {:?} not found in namespace {ns:?}",
            req.function_name
        )));
    }
    removed(&state, &key);
    tracing::info!(function = %key, "removed");
    Ok(StatusCode::OK)
}

/// The function keyed `key` was deleted from the store: stop its instances and triggers,
/// forget its counters (the caller holds `function_writes`).
pub(crate) fn removed(state: &AppState, key: &str) {
    crate::triggers::removed(state, key);
    state.provider.remove(key);
    state.forget(key);
}

/// `POST /system/scale-function/{name}` with `{"serviceName","replicas"}`; at most the
/// function's `com.openfaas.scale.max` (and the platform's cap).
pub(crate) async fn scale(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: ScaleServiceRequest = parse_json(&body)?;
    let _writing = state.function_writes.lock().await;
    let mut f = load(&state, &who, Need::Deploy, &name, &req.namespace)?;
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
    quota::check_scale(&state, &f, req.replicas)?;
    set_replicas(&state, &mut f, req.replicas)?;
    Ok(StatusCode::ACCEPTED)
}

/// Store and apply a function's wanted replicas (the caller holds `function_writes`).
fn set_replicas(state: &AppState, f: &mut StoredFunction, replicas: u64) -> Result<(), ApiError> {
    f.replicas = replicas;
    state.store.update_function(f)?;
    state.provider.scale(&f.key(), replicas)?;
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
    let (name, ns) = split_target(name, "")?;
    let Some(mut f) = state.store.function(&function_key(name, ns))? else {
        return Ok(None);
    };
    let (current, _) = state.provider.replicas(&f.key());
    let next = policy(&f.deployment)?.after_alert(firing, current);
    let next = next.min(quota::replicas_allowed(state, &f, next));
    if next != current {
        set_replicas(state, &mut f, next)?;
    }
    Ok(Some((current, next)))
}
