//! The gateway: Virga's HTTP front door. It serves the OpenFaaS gateway REST API (same paths,
//! JSON fields and status codes) so OpenFaaS clients work unchanged, checks credentials on
//! `/system/*`, and proxies `/function/*` calls to a ready instance from the provider.
//!
//! Follow one request: `router` (this file) → `invoke::proxy` → `LocalProvider::lease` →
//! the instance's watchdog; management calls go `functions` / `secrets` → store → provider.

mod asyncfn;
mod auth;
mod bundles;
mod console;
mod error;
mod functions;
mod invoke;
mod logs;
mod metrics;
mod replay;
mod secrets;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{any, get, head, post};
use axum::{middleware, Json, Router};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use virga_provider_local::LocalProvider;
use virga_store::Store;
use virga_types::{GatewayInfo, ProviderInfo, VersionInfo, DEFAULT_NAMESPACE};

pub use asyncfn::{enable_async, AsyncConfig};
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
    /// The platform's metrics (shared with the provider).
    pub metrics: Arc<virga_metrics::Metrics>,
    /// The instances' logs (shared with the provider).
    pub(crate) logs: Arc<virga_logs::LogHub>,
    fn_metrics: metrics::FunctionHandles,
    /// The async-call queue and workers, once enabled.
    async_calls: std::sync::OnceLock<asyncfn::AsyncCalls>,
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
            credentials,
            client,
            metrics: provider.metrics().clone(),
            logs: provider.logs().clone(),
            provider,
            fn_metrics: metrics::FunctionHandles::default(),
            async_calls: std::sync::OnceLock::new(),
        })
    }

    /// Invocations of `name` since start (the sum of `gateway_function_invocation_total`).
    pub(crate) fn invocation_count(&self, name: &str) -> u64 {
        self.fn_metrics.get(name).map_or(0, |m| m.invocations())
    }

    /// Forget the counters and in-memory logs of a removed function.
    pub(crate) fn forget(&self, name: &str) {
        self.fn_metrics.remove(name);
        self.logs.forget(name);
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
        .route("/system/logs", get(logs::get_logs))
        .route("/system/virga/queues", get(asyncfn::queues))
        .route(
            "/system/virga/dead-letters",
            get(asyncfn::list_dead).delete(asyncfn::purge_dead),
        )
        .route(
            "/system/virga/dead-letters/{id}/retry",
            post(asyncfn::retry_dead),
        )
        .route(
            "/system/virga/bundles/{digest}",
            head(bundles::exists).put(bundles::upload),
        )
        .layer(DefaultBodyLimit::max(state.cfg.max_bundle_bytes))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require));
    Router::new()
        .route("/healthz", get(|| async { "OK" }))
        .route("/metrics", get(metrics::scrape))
        .route("/function/{name}", any(invoke::proxy))
        .route("/function/{name}/", any(invoke::proxy))
        .route("/function/{name}/{*rest}", any(invoke::proxy))
        .route("/async-function/{name}", any(asyncfn::accept))
        .route("/async-function/{name}/", any(asyncfn::accept))
        .route("/async-function/{name}/{*rest}", any(asyncfn::accept))
        .merge(system)
        .merge(console::routes())
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
