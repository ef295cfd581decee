//! Namespaces, with OpenFaaS's API as faas-cli calls it: `GET /system/namespaces` (names),
//! `POST /system/namespace/`, `GET|PUT|DELETE /system/namespace/{name}`. Every other route
//! names its namespace with `?namespace=`, a body's `namespace` or `NAME.NAMESPACE`, and
//! [`resolve`] turns that into one that exists (404 otherwise) and the caller may use (403).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use virga_store::Namespace;
use virga_types::{
    namespace_or_default, split_key, validate_namespace, validate_new_namespace, DEFAULT_NAMESPACE,
};

use crate::error::parse_json;
use crate::{ApiError, AppState, Need, Principal};

/// `?namespace=` of a request, as faas-cli sends it (empty: the default namespace).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NamespaceQuery {
    #[serde(default)]
    pub(crate) namespace: String,
}

/// The namespace `ns` names (empty: the default), once it is known to exist and `who` may
/// do `need` in it.
pub(crate) fn resolve(
    state: &AppState,
    who: &Principal,
    need: Need,
    ns: &str,
) -> Result<String, ApiError> {
    validate_namespace(ns)?;
    let ns = namespace_or_default(ns);
    // Who may not act there learns nothing about whether it exists.
    who.check(need, ns)?;
    if state.store.namespace(ns)?.is_none() {
        return Err(not_found(ns));
    }
    Ok(ns.to_string())
}

fn not_found(ns: &str) -> ApiError {
    ApiError::NotFound(format!(
        "namespace {ns:?} not found: create it first (`virga namespace create {ns}`)"
    ))
}

/// `NAME` or `NAME.NAMESPACE` with a `?namespace=` beside it: the name and the namespace
/// (the path's wins; both given and different is a 400).
pub(crate) fn split_target<'a>(
    full: &'a str,
    query_ns: &'a str,
) -> Result<(&'a str, &'a str), ApiError> {
    match full.split_once('.') {
        Some((name, ns)) if !query_ns.is_empty() && namespace_or_default(query_ns) != ns => {
            Err(ApiError::BadRequest(format!(
                "function {name:?}: the path names namespace {ns:?} and ?namespace= names \
                 {query_ns:?}"
            )))
        }
        Some((name, ns)) => Ok((name, ns)),
        None => Ok((full, query_ns)),
    }
}

/// The body of `POST /system/namespace/` and `PUT /system/namespace/{name}`, and the answer
/// of `GET /system/namespace/{name}` (OpenFaaS's `FunctionNamespace`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct FunctionNamespace {
    #[serde(default)]
    name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

impl From<Namespace> for FunctionNamespace {
    fn from(n: Namespace) -> Self {
        FunctionNamespace {
            name: n.name,
            labels: n.labels,
            annotations: n.annotations,
        }
    }
}

/// `GET /system/namespaces`: the names the caller may see.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Vec<String>>, ApiError> {
    who.check_role(Need::Read)?;
    let all = state.store.namespaces()?;
    Ok(Json(
        all.into_iter()
            .map(|n| n.name)
            .filter(|n| who.sees(n))
            .collect(),
    ))
}

/// `GET /system/namespace/{name}`.
pub(crate) async fn get_one(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<FunctionNamespace>, ApiError> {
    let name = resolve(&state, &who, Need::Read, &name)?;
    let ns = state
        .store
        .namespace(&name)?
        .ok_or_else(|| not_found(&name))?;
    Ok(Json(ns.into()))
}

/// `POST /system/namespace/`: 201, 409 if it exists.
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    who.check_role(Need::Admin)?;
    let req: FunctionNamespace = parse_json(&body)?;
    validate_new_namespace(&req.name)?;
    crate::quota::check_annotations(&req.annotations)?;
    let mut ns = Namespace::new(&req.name);
    ns.labels = req.labels;
    ns.annotations = req.annotations;
    state.store.create_namespace(&ns).map_err(|e| match e {
        virga_store::StoreError::Exists { .. } => {
            ApiError::Conflict(format!("namespace {:?} already exists", ns.name))
        }
        e => e.into(),
    })?;
    tracing::info!(namespace = %ns.name, "namespace created");
    Ok(StatusCode::CREATED)
}

/// `PUT /system/namespace/{name}`: replace its labels and annotations.
pub(crate) async fn update(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let name = resolve(&state, &who, Need::Admin, &name)?;
    let req: FunctionNamespace = parse_json(&body)?;
    if !req.name.is_empty() && req.name != name {
        return Err(ApiError::BadRequest(format!(
            "name {:?} does not match the path's namespace {name:?}: a namespace cannot be renamed",
            req.name
        )));
    }
    crate::quota::check_annotations(&req.annotations)?;
    let _writing = state.function_writes.lock().await;
    let mut ns = state
        .store
        .namespace(&name)?
        .ok_or_else(|| not_found(&name))?;
    ns.labels = req.labels;
    ns.annotations = req.annotations;
    state.store.update_namespace(&ns)?;
    Ok(StatusCode::OK)
}

/// `?cascade=` of a namespace delete.
#[derive(Deserialize)]
pub(crate) struct DeleteQuery {
    #[serde(default)]
    cascade: bool,
}

/// `DELETE /system/namespace/{name}`: refused (409) while it holds functions or secrets,
/// unless `?cascade=true`, which removes them first.
pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let name = resolve(&state, &who, Need::Admin, &name)?;
    if name == DEFAULT_NAMESPACE {
        return Err(ApiError::BadRequest(format!(
            "{DEFAULT_NAMESPACE:?} is the default namespace and cannot be deleted"
        )));
    }
    let _writing = state.function_writes.lock().await;
    let functions: Vec<String> = state
        .store
        .functions()?
        .into_iter()
        .filter(|f| f.deployment.namespace == name)
        .map(|f| f.key())
        .collect();
    let secrets: Vec<String> = state
        .store
        .secret_names()?
        .into_iter()
        .filter(|k| split_key(k).1 == name)
        .collect();
    let empty = functions.is_empty() && secrets.is_empty();
    if !q.cascade && !empty {
        return Err(ApiError::Conflict(format!(
            "namespace {name:?} still holds {} functions and {} secrets: remove them, or \
             delete with ?cascade=true (`virga namespace remove {name} --cascade`)",
            functions.len(),
            secrets.len()
        )));
    }
    for key in &functions {
        state.store.delete_function(key)?;
        crate::functions::removed(&state, key);
    }
    for key in &secrets {
        state.store.delete_secret(key)?;
    }
    // Tokens lose it first: a namespace made again under this name is not theirs.
    state
        .store
        .forget_namespace_in_tokens(&name, chrono::Utc::now())?;
    state.store.delete_namespace(&name)?;
    tracing::info!(namespace = %name, functions = functions.len(), "namespace deleted");
    Ok(StatusCode::OK)
}
