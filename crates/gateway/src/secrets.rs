//! `/system/secrets`: create, update, list (names only: values never leave) and delete, each
//! in one namespace (`?namespace=` or the body's `namespace`; the default one otherwise).
//! Secrets are stored under their key (`name`, or `name.namespace`), so a function can only
//! name secrets of its own namespace.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use virga_types::{function_key, split_key, validate_name, validate_secret, Secret};

use crate::error::parse_json;
use crate::namespaces::{resolve, NamespaceQuery};
use crate::{ApiError, AppState, Need, Principal};

/// A secret body, checked, with its namespace known to exist and open to the caller.
fn parse_secret(state: &AppState, who: &Principal, body: &[u8]) -> Result<Secret, ApiError> {
    let mut s: Secret = parse_json(body)?;
    validate_secret(&mut s)?;
    s.namespace = resolve(state, who, Need::Deploy, &s.namespace)?;
    Ok(s)
}

/// `GET /system/secrets?namespace=`: names and namespaces.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Json<Vec<Secret>>, ApiError> {
    let ns = resolve(&state, &who, Need::Read, &q.namespace)?;
    let keys = state.store.secret_names()?;
    Ok(Json(
        keys.iter()
            .map(|k| split_key(k))
            .filter(|(_, n)| *n == ns)
            .map(|(name, namespace)| Secret {
                name: name.to_string(),
                namespace: namespace.to_string(),
                ..Default::default()
            })
            .collect(),
    ))
}

/// `POST /system/secrets`: 201, or 409 when it exists.
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let s = parse_secret(&state, &who, &body)?;
    let key = function_key(&s.name, &s.namespace);
    state.store.put_secret(&key, s.bytes(), true)?;
    Ok(StatusCode::CREATED)
}

/// `PUT /system/secrets`: 200, or 404 when missing. Running instances keep the old value
/// until they are redeployed, as in OpenFaaS.
pub(crate) async fn update(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let s = parse_secret(&state, &who, &body)?;
    let key = function_key(&s.name, &s.namespace);
    state.store.put_secret(&key, s.bytes(), false)?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
struct DeleteSecret {
    name: String,
    #[serde(default)]
    namespace: String,
}

/// `DELETE /system/secrets` with `{"name": ..., "namespace": ...}`.
pub(crate) async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Query(q): Query<NamespaceQuery>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: DeleteSecret = parse_json(&body)?;
    validate_name("name", &req.name)?;
    // faas-cli sends the namespace in the body; `?namespace=` is taken too.
    let given = if req.namespace.is_empty() {
        &q.namespace
    } else {
        &req.namespace
    };
    let ns = resolve(&state, &who, Need::Deploy, given)?;
    if state.store.delete_secret(&function_key(&req.name, &ns))? {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::NotFound(format!(
            "secret {:?} not found in namespace {ns:?}",
            req.name
        )))
    }
}
