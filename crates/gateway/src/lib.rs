//! The gateway: Virga's HTTP front door. It serves the OpenFaaS gateway REST API (same paths,
//! JSON fields and status codes) so OpenFaaS clients work unchanged, checks credentials on
//! `/system/*`, and proxies `/function/*` calls to a ready instance from the provider.
//!
//! Follow one request: `router` (this file) → `invoke::proxy` → `LocalProvider::lease` →
//! the instance's watchdog; management calls go `functions` / `secrets` → store → provider.

mod auth;
mod bundles;
mod error;
mod functions;
mod invoke;
mod secrets;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{any, get, head, post};
use axum::{middleware, Json, Router};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use virga_provider_local::LocalProvider;
use virga_store::Store;
use virga_types::{GatewayInfo, ProviderInfo, VersionInfo, DEFAULT_NAMESPACE};

pub use auth::Credentials;
pub use error::ApiError;

/// Settings of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest request body accepted for a function call (413 beyond).
    pub max_body_bytes: usize,
    /// Largest bundle upload.
    pub max_bundle_bytes: usize,
    /// How long a function call may take through the gateway (504 beyond).
    pub upstream_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body_bytes: 32 << 20,
            max_bundle_bytes: 512 << 20,
            upstream_timeout: Duration::from_secs(60),
        }
    }
}

/// Shared state of all handlers.
pub struct AppState {
    pub(crate) cfg: GatewayConfig,
    pub(crate) store: Arc<Store>,
    pub(crate) provider: Arc<LocalProvider>,
    pub(crate) credentials: Credentials,
    pub(crate) client: Client<HttpConnector, axum::body::Body>,
    invocations: RwLock<HashMap<String, Arc<AtomicU64>>>,
}

impl AppState {
    /// State for a gateway over `store` and `provider`.
    pub fn new(
        cfg: GatewayConfig,
        store: Arc<Store>,
        provider: Arc<LocalProvider>,
        credentials: Credentials,
    ) -> Arc<AppState> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Arc::new(AppState {
            cfg,
            store,
            provider,
            credentials,
            client,
            invocations: RwLock::new(HashMap::new()),
        })
    }

    /// Count one invocation of `name`.
    pub(crate) fn count_invocation(&self, name: &str) {
        if let Some(c) = self
            .invocations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.invocations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_string())
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Invocations of `name` since start.
    pub(crate) fn invocation_count(&self, name: &str) -> u64 {
        self.invocations
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Forget the counters of a removed function.
    pub(crate) fn forget(&self, name: &str) {
        self.invocations
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }
}

/// The gateway's routes.
pub fn router(state: Arc<AppState>) -> Router {
    let system = Router::new()
        .route("/system/info", get(info))
        .route(
            "/system/functions",
            get(functions::list)
                .post(functions::create)
                .put(functions::update)
                .delete(functions::delete),
        )
        .route("/system/function/{name}", get(functions::get_one))
        .route("/system/scale-function/{name}", post(functions::scale))
        .route(
            "/system/secrets",
            get(secrets::list)
                .post(secrets::create)
                .put(secrets::update)
                .delete(secrets::delete),
        )
        .route("/system/namespaces", get(namespaces))
        .route(
            "/system/virga/bundles/{digest}",
            head(bundles::exists).put(bundles::upload),
        )
        .layer(DefaultBodyLimit::max(state.cfg.max_bundle_bytes))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require));
    Router::new()
        .route("/healthz", get(|| async { "OK" }))
        .route("/function/{name}", any(invoke::proxy))
        .route("/function/{name}/", any(invoke::proxy))
        .route("/function/{name}/{*rest}", any(invoke::proxy))
        .merge(system)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .with_state(state)
}

async fn info(State(state): State<Arc<AppState>>) -> Json<GatewayInfo> {
    let version = VersionInfo {
        commit_message: String::new(),
        sha: option_env!("VIRGA_GIT_SHA").unwrap_or("").to_string(),
        release: env!("CARGO_PKG_VERSION").to_string(),
    };
    Json(GatewayInfo {
        provider: ProviderInfo {
            provider: "virga-local".into(),
            orchestration: "local".into(),
            version: version.clone(),
            isolation: state.provider.isolation().into(),
        },
        version,
        arch: std::env::consts::ARCH.into(),
    })
}

async fn namespaces() -> Json<Vec<&'static str>> {
    Json(vec![DEFAULT_NAMESPACE])
}

/// Serve the gateway on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
