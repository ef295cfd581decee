//! The gateway: Virga's HTTP front door. It serves the OpenFaaS gateway REST API (same paths,
//! JSON fields and status codes) so OpenFaaS clients work unchanged, checks credentials on
//! `/system/*`, and proxies `/function/*` calls to a ready instance from the provider.
//!
//! Follow one request: `listener` (hyper, timeouts, connection cap) → `router` (this file) →
//! `invoke::proxy` → `Provider::lease` → the instance's watchdog (`upgrade` for a WebSocket); management calls go
//! `functions` / `secrets` → store → provider; the AWS Lambda API (`/2015-03-31/...`) is
//! `lambda`, over the same invoke path. The web console has an origin of its own
//! (`console_router` on a second listener), so no function page shares it.

mod alert;
mod asyncfn;
mod audit;
mod auth;
mod backoff;
mod bundles;
mod calls;
mod conn;
mod console;
mod error;
mod functions;
mod grpc;
mod images;
mod invoke;
mod lambda;
mod limit;
mod listener;
mod logs;
mod long;
mod metrics;
mod namespaces;
mod principal;
mod pulls;
mod queues;
mod quota;
mod replay;
mod secrets;
mod tls;
mod tokens;
mod triggers;
mod upgrade;
mod whoami;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::Redirect;
use axum::routing::{any, delete, get, head, post};
use axum::{middleware, Json, Router};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use virga_provider::SharedProvider;
use virga_store::Store;
use virga_types::{GatewayInfo, ProviderInfo, VersionInfo};

pub use asyncfn::{enable_async, AsyncConfig};
pub use auth::Credentials;
pub use error::ApiError;
pub use images::{enable_images, ImagesConfig};
pub use listener::ServeConfig;
pub use principal::{Need, Principal, Role};
pub use pulls::Pulls;
pub use quota::cap as quota_cap;
pub use tls::{Tls, TlsError};
pub use triggers::enable_triggers;
pub use virga_connectors::TriggersConfig;

/// Settings of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest request body accepted for a function call (413 beyond).
    pub max_body_bytes: usize,
    /// Largest bundle upload.
    pub max_bundle_bytes: usize,
    /// What one bundle may unpack to (413 beyond).
    pub bundle_limits: virga_store::UnpackLimits,
    /// How long a function call may take through the gateway (504 beyond).
    pub upstream_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body_bytes: 32 << 20,
            max_bundle_bytes: 512 << 20,
            bundle_limits: virga_store::UnpackLimits::default(),
            upstream_timeout: Duration::from_secs(60),
        }
    }
}

/// Shared state of all handlers.
pub struct AppState {
    pub(crate) cfg: GatewayConfig,
    pub(crate) store: Arc<Store>,
    pub(crate) provider: SharedProvider,
    pub(crate) credentials: Credentials,
    /// Failed sign-ins per client address.
    pub(crate) backoff: backoff::Backoff,
    pub(crate) client: Client<HttpConnector, axum::body::Body>,
    /// The same over HTTP/2 with prior knowledge (h2c), for gRPC and HTTP/2 calls.
    pub(crate) client_h2: Client<HttpConnector, axum::body::Body>,
    /// The platform's metrics (shared with the provider).
    pub metrics: Arc<virga_metrics::Metrics>,
    /// The instances' logs (shared with the provider).
    pub(crate) logs: Arc<virga_logs::LogHub>,
    fn_metrics: metrics::FunctionHandles,
    /// The async-call queue and workers, once enabled.
    async_calls: std::sync::OnceLock<asyncfn::AsyncCalls>,
    /// Held by every change of a function, so the store and the provider see them in one order.
    pub(crate) function_writes: tokio::sync::Mutex<()>,
    /// Held (shared) by a deploy from its image pull until its function is stored, and
    /// (alone) by an image prune, so a prune never removes an image about to be used. Taken
    /// before `function_writes`.
    pub(crate) image_deploys: tokio::sync::RwLock<()>,
    /// Registry images, once enabled.
    pub(crate) images: std::sync::OnceLock<images::ImagesConfig>,
    /// KiB of Lambda API bodies held before their signature is checked (see `lambda`).
    pub(crate) lambda_unverified: tokio::sync::Semaphore,
    /// The event connectors, once enabled.
    pub(crate) triggers: std::sync::OnceLock<virga_connectors::Triggers>,
    /// The calls in progress.
    pub(crate) in_progress: Arc<calls::InProgress>,
}

impl AppState {
    /// State for a gateway over `store` and `provider`, recording into `metrics` and reading
    /// instance output from `logs` (the same ones `virga up` hands the provider).
    pub fn new(
        cfg: GatewayConfig,
        store: Arc<Store>,
        provider: SharedProvider,
        credentials: Credentials,
        metrics: Arc<virga_metrics::Metrics>,
        logs: Arc<virga_logs::LogHub>,
    ) -> Arc<AppState> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // A call may be quiet for hours: keep-alive keeps its connection known to whatever
        // lies between the gateway and the instance.
        connector.set_keepalive(Some(virga_http::KEEPALIVE_IDLE));
        connector.set_keepalive_interval(Some(virga_http::KEEPALIVE_INTERVAL));
        connector.set_keepalive_retries(Some(virga_http::KEEPALIVE_RETRIES));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector.clone());
        let client_h2 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .http2_only(true)
            .build(connector);
        Arc::new(AppState {
            cfg,
            store,
            credentials,
            backoff: backoff::Backoff::new(),
            client,
            client_h2,
            metrics,
            logs,
            provider,
            fn_metrics: metrics::FunctionHandles::default(),
            async_calls: std::sync::OnceLock::new(),
            function_writes: tokio::sync::Mutex::new(()),
            image_deploys: tokio::sync::RwLock::new(()),
            images: std::sync::OnceLock::new(),
            lambda_unverified: tokio::sync::Semaphore::new(lambda::UNVERIFIED_KIB),
            triggers: std::sync::OnceLock::new(),
            in_progress: Arc::default(),
        })
    }

    /// Invocations of `name` since start (the sum of `gateway_function_invocation_total`).
    pub(crate) fn invocation_count(&self, name: &str) -> u64 {
        self.fn_metrics
            .get(name)
            .map_or(0, |h| h.metrics.invocations())
    }

    /// Forget the counters and in-memory logs of a removed function.
    pub(crate) fn forget(&self, name: &str) {
        self.fn_metrics.remove(name);
        self.logs.forget(name);
    }
}

/// The `/system/*` routes, behind auth (basic or a token), their changes audited.
fn system_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
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
        .route("/system/alert", post(alert::receive))
        .route(
            "/system/secrets",
            get(secrets::list)
                .post(secrets::create)
                .put(secrets::update)
                .delete(secrets::delete),
        )
        .route("/system/namespaces", get(namespaces::list))
        .route("/system/namespace", post(namespaces::create))
        .route("/system/namespace/", post(namespaces::create))
        .route(
            "/system/namespace/{name}",
            get(namespaces::get_one)
                .put(namespaces::update)
                .delete(namespaces::delete),
        )
        .route("/system/logs", get(logs::get_logs))
        .route("/system/virga/queues", get(queues::queues))
        .route(
            "/system/virga/dead-letters",
            get(queues::list_dead).delete(queues::purge_dead),
        )
        .route(
            "/system/virga/dead-letters/{id}/retry",
            post(queues::retry_dead),
        )
        .route("/system/virga/triggers", get(triggers::list))
        .route("/system/virga/calls", get(calls::list))
        .route("/system/virga/whoami", get(whoami::get))
        .route("/system/virga/images", get(images::list))
        .route("/system/virga/images/prune", post(images::prune))
        .route(
            "/system/virga/bundles/{digest}",
            head(bundles::exists).put(bundles::upload),
        )
        .route(
            "/system/virga/tokens",
            get(tokens::list).post(tokens::create),
        )
        .route("/system/virga/tokens/{id}", delete(tokens::revoke))
        .route("/system/virga/audit", get(audit::list))
        .route("/system/virga/invoke/{name}", any(console::invoke))
        .route("/system/virga/invoke/{name}/", any(console::invoke))
        .route("/system/virga/invoke/{name}/{*rest}", any(console::invoke))
        .layer(DefaultBodyLimit::max(state.cfg.max_bundle_bytes))
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require))
}

/// The API's routes (the OpenFaaS gateway's). `/ui` points to the console's own origin at
/// `console` (over HTTPS if `https`), if it is on.
pub fn router(state: Arc<AppState>, console: Option<SocketAddr>, https: bool) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::scrape))
        .route("/function/{name}", any(invoke::proxy))
        .route("/function/{name}/", any(invoke::proxy))
        .route("/function/{name}/{*rest}", any(invoke::proxy))
        .route("/async-function/{name}", any(asyncfn::accept))
        .route("/async-function/{name}/", any(asyncfn::accept))
        .route("/async-function/{name}/{*rest}", any(asyncfn::accept))
        .merge(system_routes(&state))
        .merge(lambda::routes(&state))
        .merge(console::moved(console, https))
        .fallback(grpc::routed)
        .with_state(state)
}

/// The console's origin: its files, the API routes it uses (`/system/*`, `/metrics`) and
/// `/healthz`; never a function's answer.
pub fn console_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/healthz", get(|| async { "OK" }))
        .route("/metrics", get(metrics::scrape))
        .merge(system_routes(&state))
        .merge(console::routes())
        .fallback(|| async {
            ApiError::NotFound(
                "not served on the console's address (only /ui/, /system/* and /metrics): \
                 call functions at the gateway's API address"
                    .into(),
            )
        })
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
            provider: state.provider.name().into(),
            orchestration: "local".into(),
            version: version.clone(),
            isolation: state.provider.isolation().into(),
        },
        version,
        arch: std::env::consts::ARCH.into(),
    })
}

/// `GET /healthz`: OK, or 503 while the store cannot write (e.g. its disk is full).
async fn healthz(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    state
        .store
        .health()
        .map(|()| "OK")
        .map_err(|e| ApiError::Unavailable(format!("unhealthy: {e}")))
}

/// The sockets the gateway serves.
pub struct Listeners {
    /// The API (`/function/*`, `/async-function/*`, `/system/*`, `/metrics`, `/healthz`).
    pub api: tokio::net::TcpListener,
    /// The console's own origin, unless it is off.
    pub console: Option<tokio::net::TcpListener>,
    /// HTTPS on both, when configured (plain HTTP otherwise).
    pub tls: Option<Tls>,
}

/// Serve the gateway on `listeners` until `shutdown` completes, then finish the requests in
/// flight and return once every connection has ended.
pub async fn serve(
    listeners: Listeners,
    state: Arc<AppState>,
    cfg: &ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let console_addr = listeners
        .console
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let life = listener::Lifecycle::new();
    let mut loops = Vec::new();
    let api = limit::Limiter::new(cfg.max_connections, cfg.reserved_connections);
    let (stop, open) = life.handles();
    let tls = listeners.tls.clone();
    let https = tls.is_some();
    let (router, c) = (router(state.clone(), console_addr, https), cfg.clone());
    loops.push(tokio::spawn(async move {
        listener::accept_loop(listeners.api, router, &c, tls, api, stop, open).await
    }));
    if let Some(l) = listeners.console {
        let limiter = limit::Limiter::new(cfg.reserved_connections, cfg.reserved_connections);
        let (stop, open) = life.handles();
        let (router, c, tls) = (console_router(state), cfg.clone(), listeners.tls);
        loops.push(tokio::spawn(async move {
            listener::accept_loop(l, router, &c, tls, limiter, stop, open).await
        }));
    }
    shutdown.await;
    let stopped = life.shut_down();
    for l in loops {
        let _ = l.await;
    }
    // Calls and deploys under way get a grace period, not a veto: a stuck one (a registry
    // that never answers, a function streaming forever) must not keep the platform up.
    if tokio::time::timeout(SHUTDOWN_GRACE, stopped).await.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "connections still open at shutdown: closing them");
    }
    Ok(())
}

/// How long a shutdown waits for open connections to finish.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
