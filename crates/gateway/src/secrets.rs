//! `/system/secrets`: create, update, list (names only: values never leave) and delete.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use virga_types::{validate_name, validate_namespace, validate_secret, Secret, DEFAULT_NAMESPACE};

use crate::error::parse_json;
use crate::functions::NamespaceQuery;
use crate::{ApiError, AppState};

fn parse_secret(body: &[u8]) -> Result<Secret, ApiError> {
    let mut s: Secret = parse_json(body)?;
    validate_secret(&mut s)?;
    Ok(s)
}

/// `GET /system/secrets`: names and namespaces.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Query(ns): Query<NamespaceQuery>,
) -> Result<Json<Vec<Secret>>, ApiError> {
    ns.check()?;
    let names = state.store.secret_names()?;
    Ok(Json(
        names
            .into_iter()
            .map(|name| Secret {
                name,
                namespace: DEFAULT_NAMESPACE.into(),
                ..Default::default()
            })
            .collect(),
    ))
}

/// `POST /system/secrets`: 201, or 409 when it exists.
pub(crate) async fn create(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let s = parse_secret(&body)?;
    state.store.put_secret(&s.name, s.bytes(), true)?;
    Ok(StatusCode::CREATED)
}

/// `PUT /system/secrets`: 200, or 404 when missing. Running instances keep the old value
/// until they are redeployed, as in OpenFaaS.
pub(crate) async fn update(
    State(state): State<Arc<AppState>>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let s = parse_secret(&body)?;
    state.store.put_secret(&s.name, s.bytes(), false)?;
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
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let req: DeleteSecret = parse_json(&body)?;
    validate_name("name", &req.name)?;
    validate_namespace(&req.namespace)?;
    if state.store.delete_secret(&req.name)? {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::NotFound(format!(
            "secret {:?} not found",
            req.name
        )))
    }
}
