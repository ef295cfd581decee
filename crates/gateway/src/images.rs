//! Registry images: a deploy or update naming one resolves and pulls it before the function
//! is stored (the answer comes once its layers are local) and pins the stored definition to
//! the digest; `GET /system/virga/images` lists the image store (sizes, the functions using
//! each image) and `POST /system/virga/images/prune` removes what no function uses.
//! `registryAuth` serves the deploy's pull only: it is taken out before anything is stored.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use tokio::sync::RwLockReadGuard;
use virga_oci::{Credentials, Digest, Images, OciError, RegistryConfig};
use virga_types::{BundleRef, FunctionDeployment};

use crate::pulls::Pulls;
use crate::{ApiError, AppState};

/// What the gateway needs to pull images for functions.
#[derive(Debug)]
pub struct ImagesConfig {
    /// The image store (shared with the provider).
    pub images: Arc<Images>,
    /// The Docker-style `config.json` with registry credentials (`--registry-config`).
    pub registry_config: PathBuf,
    /// Why image functions cannot run on this platform, if they cannot (no runc).
    pub unavailable: Option<String>,
    /// Pulls under way or failed, per function (shared with `virga up`'s start-up pulls).
    pub pulls: Arc<Pulls>,
}

/// Turn image functions on for `state`'s gateway (once; later calls are ignored).
pub fn enable_images(state: &AppState, cfg: ImagesConfig) {
    let _ = state.images.set(cfg);
}

/// For a registry image: pull `d.image`, pin it to its digest (`repo@sha256:...`) and return
/// the reference as given, with a guard that holds off prunes until the caller stored the
/// function. Takes `registryAuth` out of `d` whatever the image is.
pub(crate) async fn pin<'a>(
    state: &'a AppState,
    d: &mut FunctionDeployment,
) -> Result<(Option<String>, RwLockReadGuard<'a, ()>), ApiError> {
    let auth = std::mem::take(&mut d.registry_auth);
    let guard = state.image_deploys.read().await;
    if d.image.is_empty() || BundleRef::parse(&d.image).is_some() {
        return Ok((None, guard));
    }
    let cfg = state.images.get().ok_or_else(|| {
        ApiError::BadRequest(format!(
            "image {:?}: this platform does not run registry images",
            d.image
        ))
    })?;
    if let Some(why) = &cfg.unavailable {
        return Err(ApiError::BadRequest(format!(
            "image {:?}: image functions run in runc sandboxes, which this platform cannot \
             use ({why}): start `virga up` as root with runc installed",
            d.image
        )));
    }
    let reference = virga_oci::parse_reference(&d.image)?;
    let creds = if auth.is_empty() {
        RegistryConfig::load(&cfg.registry_config)?.lookup(reference.registry())?
    } else {
        Some(Credentials::from_base64(&auth).map_err(|_| {
            ApiError::BadRequest(
                "registryAuth: not base64 of user:password (what `faas-cli deploy \
                 --send-registry-auth` sends)"
                    .into(),
            )
        })?)
    };
    // One resolution: the tag is recorded with the image, and what it pointed at is pinned.
    let key = virga_types::function_key(&d.service, &d.namespace);
    let progress = cfg.pulls.start(&key, &d.image);
    let pulled = cfg
        .images
        .pull(&d.image, creds.as_ref(), Some(progress))
        .await;
    let image = match pulled.and_then(|i| i.user_ids().map(|_| i)) {
        Ok(image) => {
            cfg.pulls.done(&key, &d.image);
            image
        }
        Err(e) => {
            cfg.pulls.failed(&key, &d.image, &e.to_string());
            return Err(e.into());
        }
    };
    let pinned = format!(
        "{}/{}@{}",
        reference.registry(),
        reference.repository(),
        image.digest
    );
    tracing::info!(function = %key, image = %d.image, %pinned, "image pulled");
    Ok((Some(std::mem::replace(&mut d.image, pinned)), guard))
}

/// The digest a stored function's image is pinned to, if it is a registry image.
pub(crate) fn pinned_digest(image: &str) -> Option<Digest> {
    if BundleRef::parse(image).is_some() {
        return None;
    }
    Digest::pinned_in(image)
}

/// One image of `GET /system/virga/images`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageEntry {
    digest: String,
    manifest: String,
    references: Vec<String>,
    /// Bytes stored (compressed layers, config, manifests).
    size: u64,
    /// Bytes its layers unpack to.
    unpacked_size: u64,
    layers: usize,
    /// The functions pinned to it.
    functions: Vec<String>,
}

/// The functions using each image digest.
fn users(state: &AppState) -> Result<BTreeMap<Digest, Vec<String>>, ApiError> {
    let mut users: BTreeMap<Digest, Vec<String>> = BTreeMap::new();
    for f in state.store.functions()? {
        if let Some(d) = pinned_digest(&f.deployment.image) {
            users.entry(d).or_default().push(f.key());
        }
    }
    Ok(users)
}

fn store(state: &AppState) -> Result<&ImagesConfig, ApiError> {
    state
        .images
        .get()
        .ok_or_else(|| ApiError::NotFound("this platform has no image store".into()))
}

/// `GET /system/virga/images`.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    axum::Extension(who): axum::Extension<crate::Principal>,
) -> Result<Json<Vec<ImageEntry>>, ApiError> {
    // Images are shared by every namespace: listing them names every tenant's functions.
    who.check_role(crate::Need::Admin)?;
    let cfg = store(&state)?;
    let users = users(&state)?;
    let entries = cfg
        .images
        .list()?
        .into_iter()
        .map(|i| ImageEntry {
            // Pinned to the index or (for an image of one platform) the manifest itself.
            functions: std::iter::once(&i.digest)
                .chain((i.manifest != i.digest).then_some(&i.manifest))
                .filter_map(|d| users.get(d))
                .flatten()
                .cloned()
                .collect(),
            digest: i.digest.to_string(),
            manifest: i.manifest.to_string(),
            references: i.references,
            size: i.size,
            unpacked_size: i.unpacked_size,
            layers: i.layers.len(),
        })
        .collect();
    Ok(Json(entries))
}

/// What a prune removed.
#[derive(Serialize)]
pub(crate) struct PruneReport {
    images: usize,
    blobs: usize,
    layers: usize,
    bytes: u64,
}

/// `POST /system/virga/images/prune`: remove the images no function is pinned to. Waits for
/// deploys between their pull and their store, and holds the function writes, so no deploy
/// stores a function on an image being removed.
pub(crate) async fn prune(
    State(state): State<Arc<AppState>>,
    axum::Extension(who): axum::Extension<crate::Principal>,
) -> Result<Json<PruneReport>, ApiError> {
    who.check_role(crate::Need::Admin)?;
    let cfg = store(&state)?;
    let _no_deploys = state.image_deploys.write().await;
    let _writing = state.function_writes.lock().await;
    let in_use: HashSet<Digest> = users(&state)?.into_keys().collect();
    let p = cfg.images.prune(&in_use).await?;
    tracing::info!(images = p.images, bytes = p.bytes, "images pruned");
    Ok(Json(PruneReport {
        images: p.images,
        blobs: p.blobs,
        layers: p.layers,
        bytes: p.bytes,
    }))
}

impl From<OciError> for ApiError {
    fn from(e: OciError) -> Self {
        use axum::http::StatusCode;
        let msg = e.to_string();
        match e {
            OciError::BadReference { .. }
            | OciError::BadImage { .. }
            | OciError::BadLayer { .. }
            | OciError::WrongPlatform { .. }
            | OciError::BadInput(_) => ApiError::BadRequest(msg),
            OciError::NotFound { .. } | OciError::NotCached(_) => ApiError::NotFound(msg),
            OciError::Unauthorized { .. } => ApiError::Registry(StatusCode::UNAUTHORIZED, msg),
            OciError::Forbidden { .. } => ApiError::Registry(StatusCode::FORBIDDEN, msg),
            OciError::Unreachable { .. } | OciError::DigestMismatch { .. } => {
                ApiError::BadGateway(msg)
            }
            OciError::TooLarge(_) => ApiError::ContentTooLarge(msg),
            OciError::Full(_) => ApiError::InsufficientStorage(msg),
            _ => ApiError::Internal(msg),
        }
    }
}
