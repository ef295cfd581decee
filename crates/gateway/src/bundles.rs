//! `/system/virga/bundles/sha256:HEX` (Virga extension): upload function code built by
//! `virga build`. The body streams to a temporary file; the store checks its hash, keeps it and
//! unpacks it. Deployments then refer to it as `virga.local/NAME@sha256:HEX`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use virga_types::{is_sha256_hex, BundleManifest, BundleRef, BundleUploaded, BUNDLE_MANIFEST};

use crate::{ApiError, AppState};

/// Most bytes of a bundle manifest read.
const MANIFEST_LIMIT: u64 = 1 << 20;

fn digest_hex(digest: &str) -> Result<&str, ApiError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| is_sha256_hex(h))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{digest:?} is not a digest: use sha256: and 64 lower-case hex digits"
            ))
        })
}

/// `HEAD`: 200 when stored, 404 when not.
pub(crate) async fn exists(
    State(state): State<Arc<AppState>>,
    axum::Extension(who): axum::Extension<crate::Principal>,
    Path(digest): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.check_role(crate::Need::Deploy)?;
    let hex = digest_hex(&digest)?;
    Ok(match state.store.bundles().path(hex) {
        Some(_) => StatusCode::OK,
        None => StatusCode::NOT_FOUND,
    })
}

/// `PUT`: store the archive in the body; 201 with the image reference to deploy.
pub(crate) async fn upload(
    State(state): State<Arc<AppState>>,
    axum::Extension(who): axum::Extension<crate::Principal>,
    Path(digest): Path<String>,
    body: Body,
) -> Result<(StatusCode, Json<BundleUploaded>), ApiError> {
    who.check_role(crate::Need::Deploy)?;
    let hex = digest_hex(&digest)?.to_string();
    let tmp = state.store.bundles().temp_path();
    let written = write_body(&tmp, body, state.cfg.max_bundle_bytes).await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    let store = state.store.clone();
    let hex2 = hex.clone();
    let limits = state.cfg.bundle_limits;
    let size = tokio::task::spawn_blocking(move || store.bundles().commit(&tmp, &hex2, &limits))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let image = BundleRef {
        name: "bundle".into(),
        digest: hex,
    };
    Ok((
        StatusCode::CREATED,
        Json(BundleUploaded {
            image: image.to_string(),
            size,
        }),
    ))
}

async fn write_body(path: &std::path::Path, body: Body, limit: usize) -> Result<(), ApiError> {
    let io = |e: std::io::Error| match virga_store::is_disk_full(&e) {
        true => ApiError::InsufficientStorage(
            "the data directory's disk is full: the upload was not stored; free some space \
             and try again"
                .into(),
        ),
        false => ApiError::Internal(format!("write bundle: {e}")),
    };
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(io)?;
    let mut stream = body.into_data_stream();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                ApiError::TooLarge(limit)
            } else {
                ApiError::BadRequest(format!("reading upload: {e}"))
            }
        })?;
        total += chunk.len();
        if total > limit {
            return Err(ApiError::TooLarge(limit));
        }
        file.write_all(&chunk).await.map_err(io)?;
    }
    file.flush().await.map_err(io)
}

/// The environment a bundle's manifest sets (empty for images and unreadable manifests).
pub(crate) fn manifest_env(state: &AppState, image: &str) -> BTreeMap<String, String> {
    let Some(bundle) = BundleRef::parse(image) else {
        return BTreeMap::new();
    };
    let Some(dir) = state.store.bundles().path(&bundle.digest) else {
        return BTreeMap::new();
    };
    virga_store::read_beneath(&dir, BUNDLE_MANIFEST, MANIFEST_LIMIT)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<BundleManifest>(&b).ok())
        .map(|m| m.env)
        .unwrap_or_default()
}
