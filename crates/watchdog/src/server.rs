//! The HTTP listener: routing between health endpoints and the function,
//! the in-flight limit, common response headers and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use virga_http::handoff;
use virga_types::headers;

use crate::body::{text, with_guard, ResponseBody};
use crate::config::{Config, Mode};
use crate::lambda::Lambda;
use crate::process::ExecSettings;
use crate::proxy::Proxy;
use crate::upgrade::{Pending, Upgrades};
use crate::{serializing, streaming, WatchdogError};

const X_DURATION_SECONDS: HeaderName = HeaderName::from_static(headers::X_DURATION_SECONDS);
const X_CALL_ID: HeaderName = HeaderName::from_static(headers::X_CALL_ID);

enum Handler {
    Serializing(ExecSettings),
    Streaming(ExecSettings),
    Http(Arc<Proxy>),
    Lambda(Arc<Lambda>),
}

struct State {
    handler: Handler,
    max_inflight: usize,
    inflight: Arc<AtomicUsize>,
    upgrades: Upgrades,
}

/// Decrements the in-flight counter when dropped.
struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl State {
    fn acquire(&self) -> Option<InflightGuard> {
        let max = self.max_inflight;
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InflightGuard(Arc::clone(&self.inflight)))
    }

    async fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        match req.uri().path() {
            "/_/health" => self.health(false).await,
            "/_/ready" => self.health(true).await,
            _ => self.function(req, peer).await,
        }
    }

    async fn health(&self, ready: bool) -> Response<ResponseBody> {
        if ready
            && self.max_inflight > 0
            && self.inflight.load(Ordering::Acquire) >= self.max_inflight
        {
            return text(StatusCode::SERVICE_UNAVAILABLE, "at max_inflight capacity");
        }
        let ok = match &self.handler {
            Handler::Http(proxy) => proxy.is_ready().await,
            Handler::Lambda(lambda) => lambda.is_ready(),
            Handler::Serializing(_) | Handler::Streaming(_) => true,
        };
        if ok {
            let mut resp = Response::new(crate::body::full("OK"));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            resp
        } else {
            text(StatusCode::SERVICE_UNAVAILABLE, "function is not ready")
        }
    }

    async fn function(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        let start = Instant::now();
        let Some(guard) = self.acquire() else {
            return text(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Concurrent request limit exceeded. Max concurrent requests: {}",
                    self.max_inflight
                ),
            );
        };
        let call_id = req.headers().get(&X_CALL_ID).cloned();
        let resp = match &self.handler {
            Handler::Serializing(s) => serializing::handle(s, req).await,
            Handler::Streaming(s) => streaming::handle(s, req).await,
            Handler::Http(p) => p.handle(req, peer).await,
            Handler::Lambda(l) => l.handle(req, peer).await,
        };
        let (mut parts, body) = resp.into_parts();
        let secs = format!("{:.6}", start.elapsed().as_secs_f64());
        if let Ok(v) = HeaderValue::from_str(&secs) {
            parts.headers.insert(X_DURATION_SECONDS, v);
        }
        if let Some(id) = call_id {
            parts.headers.entry(X_CALL_ID).or_insert(id);
        }
        // An upgraded connection is in flight for as long as it is open.
        if let Some(pending) = parts.extensions.remove::<Pending>().and_then(|p| p.take()) {
            if self.upgrades.start(pending, guard) {
                parts
                    .headers
                    .insert(handoff::HEADER, HeaderValue::from_static(handoff::ACCEPTED));
            }
            return Response::from_parts(parts, body);
        }
        // The guard lives until the (possibly streamed) body is done.
        Response::from_parts(parts, with_guard(body, guard))
    }
}

/// The hand-off socket of an http-mode watchdog given `handoff_socket`.
fn handoffs(config: &Config) -> Result<Option<Arc<handoff::Handoffs>>, WatchdogError> {
    match (&config.handoff_socket, config.mode) {
        (Some(path), Mode::Http) => {
            handoff::Handoffs::bind(path)
                .map(Some)
                .map_err(|source| WatchdogError::Handoff {
                    path: path.clone(),
                    source,
                })
        }
        _ => Ok(None),
    }
}

/// A bound, not yet serving watchdog.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<State>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl Server {
    /// Binds the listener (`bind_address:port`) without starting the function.
    pub async fn bind(config: Config) -> Result<Self, WatchdogError> {
        let addr = SocketAddr::new(config.bind_address, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| WatchdogError::Bind { addr, source })?;
        let addr = listener.local_addr()?;
        let handler = match config.mode {
            Mode::Serializing => Handler::Serializing(ExecSettings::from_config(&config)),
            Mode::Streaming => Handler::Streaming(ExecSettings::from_config(&config)),
            Mode::Http => {
                let upstream = config
                    .upstream_url
                    .clone()
                    .ok_or(crate::config::ConfigError::Missing("upstream_url"))?;
                Handler::Http(Proxy::new(&config, &upstream))
            }
            Mode::Lambda => Handler::Lambda(Lambda::bind(&config)?),
        };
        Ok(Server {
            listener,
            addr,
            state: Arc::new(State {
                handler,
                max_inflight: config.max_inflight,
                inflight: Arc::new(AtomicUsize::new(0)),
                upgrades: Upgrades::new(config.drain_grace, handoffs(&config)?),
            }),
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
        })
    }

    /// Resolves the moment the function can serve: at once for the per-request modes, when
    /// the upstream accepts connections in http mode, when the runtime asks for its first
    /// event in lambda mode (both start with `serve`).
    pub fn readiness(&self) -> impl Future<Output = ()> + Send + 'static {
        let (proxy, lambda) = match &self.state.handler {
            Handler::Http(p) => (Some(Arc::clone(p)), None),
            Handler::Lambda(l) => (None, Some(Arc::clone(l))),
            Handler::Serializing(_) | Handler::Streaming(_) => (None, None),
        };
        async move {
            if let Some(p) = proxy {
                p.wait_ready().await;
            }
            if let Some(l) = lambda {
                l.wait_ready().await;
            }
        }
    }

    /// The address actually bound (useful with `port=0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the function (http mode) and serves until `shutdown` resolves, then drains
    /// in-flight requests (bounded by write_timeout) and upgraded connections (bounded by
    /// drain_grace) and stops the function.
    pub async fn serve<F>(self, shutdown: F) -> Result<(), WatchdogError>
    where
        F: Future<Output = ()>,
    {
        let Server {
            listener,
            state,
            read_timeout,
            write_timeout,
            ..
        } = self;
        match &state.handler {
            Handler::Http(proxy) => proxy.start(),
            Handler::Lambda(lambda) => lambda.start()?,
            Handler::Serializing(_) | Handler::Streaming(_) => {}
        }
        // HTTP/1.1 and h2c (prior knowledge) on the same port (see `crate::h2`); HTTP/1.1
        // upgrades too (see `crate::upgrade`).
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(read_timeout)
            .keep_alive(true);
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Usually EMFILE: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let _ = virga_http::keep_alive(&stream);
                    let state = Arc::clone(&state);
                    let svc = service_fn(move |req| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(state.route(req, peer).await) }
                    });
                    let conn = http.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(error = %e, "connection error");
                        }
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        drop(listener);
        tracing::info!("shutting down: waiting for in-flight requests");
        let requests = async {
            match write_timeout {
                Some(t) => tokio::time::timeout(t, graceful.shutdown()).await.is_ok(),
                None => {
                    graceful.shutdown().await;
                    true
                }
            }
        };
        // Upgraded connections left hyper's watch when they switched: they drain on their own.
        let (drained, ()) = tokio::join!(requests, state.upgrades.drain());
        if !drained {
            tracing::warn!("in-flight requests did not finish within write_timeout");
        }
        match &state.handler {
            Handler::Http(proxy) => proxy.shutdown().await,
            Handler::Lambda(lambda) => lambda.shutdown().await,
            Handler::Serializing(_) | Handler::Streaming(_) => {}
        }
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("received SIGTERM"),
                _ = ctrl_c => tracing::info!("received SIGINT"),
            }
        }
        Err(_) => ctrl_c.await,
    }
}

/// The stdout line that says the instance can serve now.
pub const READY_LINE: &str = "virga-watchdog ready";

/// Binds, prints `virga-watchdog listening on <addr>` to stdout, then `virga-watchdog ready`
/// once the function can serve, and serves
/// until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), WatchdogError> {
    let mode = config.mode;
    let server = Server::bind(config).await?;
    let addr = server.local_addr();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "virga-watchdog listening on {addr}")?;
        out.flush()?;
    }
    // Readiness is pushed to whoever started us, as one stdout line, instead of being polled.
    let ready = server.readiness();
    tokio::spawn(async move {
        ready.await;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{READY_LINE}");
        let _ = out.flush();
    });
    tracing::info!(%addr, %mode, "watchdog started");
    server.serve(shutdown_signal()).await
}
