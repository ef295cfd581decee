//! HTTP mode: supervises one long-running function process (restarting it with
//! a backoff when it exits) and reverse-proxies requests to `upstream_url`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::body::{text, ResponseBody};
use crate::config::Config;
use crate::logger::LineLogger;
use crate::process::{signal_group, FunctionSpec};
use crate::upgrade::Pending;
use virga_http::{handoff, upgrade, Attempt, Replayable, HOP_BY_HOP};

/// How long a readiness probe result is reused.
const HEALTH_CACHE: Duration = Duration::from_millis(5);
/// Bound on one readiness TCP connect.
const CONNECT_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Restart backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A process that ran this long resets the backoff.
const STABLE_RUN: Duration = Duration::from_secs(10);
/// Grace between SIGTERM and SIGKILL at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a request waits for a restarting function process before a 503.
const RESTART_WAIT: Duration = Duration::from_secs(10);

/// The http-mode handler: upstream supervisor plus reverse proxy.
pub struct Proxy {
    spec: FunctionSpec,
    client: Client<HttpConnector, Attempt<Incoming>>,
    /// The same over h2c, for gRPC calls.
    client_h2: Client<HttpConnector, Attempt<Incoming>>,
    scheme_authority: String,
    base_path: String,
    upstream_addr: String,
    exec_timeout: Option<Duration>,
    healthcheck_interval: Duration,
    running: AtomicBool,
    health: Mutex<Option<(Instant, bool)>>,
    shutdown: watch::Sender<bool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl Proxy {
    /// Creates the proxy (the function process is started by [`Proxy::start`]).
    pub fn new(config: &Config, upstream: &Uri) -> Arc<Self> {
        let (client, client_h2) = crate::h2::clients(Duration::from_secs(60));
        let authority = upstream.authority().map(|a| a.as_str()).unwrap_or_default();
        let host = upstream.host().unwrap_or("127.0.0.1");
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = upstream.port_u16().unwrap_or(80);
        let upstream_addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Arc::new(Proxy {
            spec: FunctionSpec::from_config(config),
            client,
            client_h2,
            scheme_authority: format!("http://{authority}"),
            base_path: upstream.path().trim_end_matches('/').to_owned(),
            upstream_addr,
            exec_timeout: config.exec_timeout,
            healthcheck_interval: config.healthcheck_interval,
            running: AtomicBool::new(false),
            health: Mutex::new(None),
            shutdown: watch::channel(false).0,
            supervisor: Mutex::new(None),
        })
    }

    /// Starts the supervisor that keeps the function process running.
    pub fn start(self: &Arc<Self>) {
        let this = Arc::clone(self);
        let handle = tokio::spawn(async move { this.supervise().await });
        *lock(&self.supervisor) = Some(handle);
        let this = Arc::clone(self);
        tokio::spawn(async move { this.periodic_health().await });
    }

    /// Stops the function process and waits for the supervisor to finish.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        let handle = lock(&self.supervisor).take();
        if let Some(h) = handle {
            let _ = h.await;
        }
    }

    /// Whether the upstream accepts TCP connections (probed on demand, briefly cached).
    pub async fn is_ready(&self) -> bool {
        if !self.running.load(Ordering::Acquire) {
            return false;
        }
        if let Some((at, ok)) = *lock(&self.health) {
            if at.elapsed() < HEALTH_CACHE {
                return ok;
            }
        }
        let ok = matches!(
            tokio::time::timeout(
                CONNECT_PROBE_TIMEOUT,
                TcpStream::connect(&self.upstream_addr)
            )
            .await,
            Ok(Ok(_))
        );
        *lock(&self.health) = Some((Instant::now(), ok));
        ok
    }

    /// Whether requests can go straight to the upstream: it runs, and the last thing known
    /// of it is not a refused connection.
    fn serving(&self) -> bool {
        self.running.load(Ordering::Acquire) && !matches!(*lock(&self.health), Some((_, false)))
    }

    /// Resolves once the upstream accepts a connection (probing every millisecond for the
    /// first 100 ms, when a forked or pooled runtime is expected, then every 10 ms).
    pub async fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            if self.running.load(Ordering::Acquire)
                && TcpStream::connect(&self.upstream_addr).await.is_ok()
            {
                *lock(&self.health) = Some((Instant::now(), true));
                return;
            }
            let delay = if started.elapsed() < Duration::from_millis(100) {
                Duration::from_millis(1)
            } else {
                Duration::from_millis(10)
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// Logs upstream health transitions every `healthcheck_interval`.
    async fn periodic_health(self: Arc<Self>) {
        let mut rx = self.shutdown.subscribe();
        let mut last = None;
        loop {
            let ok = self.is_ready().await;
            if last != Some(ok) {
                if ok {
                    tracing::info!(upstream = %self.upstream_addr, "upstream is accepting connections");
                } else if last.is_some() {
                    tracing::warn!(upstream = %self.upstream_addr, "upstream is not accepting connections");
                }
                last = Some(ok);
            }
            // Poll quickly until the first success so the startup log is timely.
            let wait = if ok || last.is_none() {
                self.healthcheck_interval
            } else {
                self.healthcheck_interval.min(Duration::from_millis(200))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stopped(&mut rx) => return,
            }
        }
    }

    /// Keeps the function process running until shutdown.
    async fn supervise(self: Arc<Self>) {
        let mut rx = self.shutdown.subscribe();
        let mut backoff = BACKOFF_MIN;
        let program = self.spec.program().to_owned();
        loop {
            if *rx.borrow() {
                return;
            }
            let started = Instant::now();
            match self.command().spawn() {
                Err(e) => {
                    tracing::error!(program, error = %e, "failed to start function process");
                }
                Ok(mut child) => {
                    let pid = child.id();
                    tracing::info!(program, pid, "started function process");
                    let logger = |name| LineLogger {
                        name,
                        prefix: self.spec.prefix_logs,
                        max_line: self.spec.log_buffer_size,
                    };
                    if let Some(out) = child.stdout.take() {
                        logger("stdout").forward(out, 0);
                    }
                    if let Some(err) = child.stderr.take() {
                        logger("stderr").forward(err, 0);
                    }
                    self.running.store(true, Ordering::Release);
                    // Not serving until it accepts a connection.
                    *lock(&self.health) = Some((Instant::now(), false));
                    tokio::select! {
                        status = child.wait() => {
                            self.mark_down();
                            // Clean up anything the process left in its group.
                            if let Some(pid) = pid {
                                signal_group(pid, libc::SIGKILL);
                            }
                            match status {
                                Ok(s) => tracing::warn!(program, pid, status = %s,
                                    "function process exited; restarting in {backoff:?}"),
                                Err(e) => tracing::warn!(program, error = %e,
                                    "failed to wait for function process; restarting"),
                            }
                        }
                        _ = stopped(&mut rx) => {
                            self.mark_down();
                            stop_child(&mut child, pid).await;
                            tracing::info!(program, pid, "stopped function process");
                            return;
                        }
                    }
                }
            }
            if started.elapsed() >= STABLE_RUN {
                backoff = BACKOFF_MIN;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped(&mut rx) => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn mark_down(&self) {
        self.running.store(false, Ordering::Release);
        *lock(&self.health) = Some((Instant::now(), false));
    }

    fn command(&self) -> Command {
        self.spec.long_running_command()
    }

    /// Forwards one request to the upstream and streams the answer back (a `101` to an
    /// `Upgrade` carries both connections to splice, for the server to start).
    pub async fn handle(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        // After a crash the function process is restarted: hold the request until it serves
        // again rather than fail it (bounded by exec_timeout and RESTART_WAIT: a process that
        // keeps crashing or never listens gets a 503).
        let hold = self
            .exec_timeout
            .map_or(RESTART_WAIT, |t| t.min(RESTART_WAIT));
        if !self.serving() && !self.held(hold).await {
            return self.not_serving(hold);
        }
        // Only the gateway's handshake may ask for a hand-off; the function never sees it.
        let handoff = req.headers_mut().remove(handoff::HEADER);
        let mut client_upgrade = upgrade::requested(req.version(), req.headers()).then(|| {
            let id = handoff.and_then(|v| v.to_str().ok().map(str::to_owned));
            (hyper::upgrade::on(&mut req), id)
        });
        let (mut parts, body) = req.into_parts();
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let target = format!(
            "{}{}{}",
            self.scheme_authority, self.base_path, path_and_query
        );
        parts.uri = match target.parse() {
            Ok(uri) => uri,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("cannot build upstream URL: {e}"),
                )
            }
        };
        if client_upgrade.is_some() {
            upgrade::keep_upgrade(&mut parts.headers);
        } else {
            strip_hop_headers(&mut parts.headers);
        }
        let (version, h2) = crate::h2::upstream_version(&mut parts.headers);
        parts.version = version;
        if let Some(host) = parts.headers.remove(HOST) {
            parts
                .headers
                .entry(HeaderName::from_static("x-forwarded-host"))
                .or_insert(host);
        }
        if let Ok(ip) = HeaderValue::from_str(&peer.ip().to_string()) {
            parts
                .headers
                .append(HeaderName::from_static("x-forwarded-for"), ip);
        }
        let body = Replayable::new(body);
        let mut held = false;
        loop {
            let Some(attempt) = body.attempt() else {
                return text(
                    StatusCode::BAD_GATEWAY,
                    "upstream failed reading the request",
                );
            };
            let mut req = Request::new(attempt);
            *req.method_mut() = parts.method.clone();
            *req.uri_mut() = parts.uri.clone();
            *req.version_mut() = parts.version;
            *req.headers_mut() = parts.headers.clone();
            match self.send(req, h2).await {
                // The process died a moment ago and the request reached nothing: send it again
                // (once) when the restarted process serves.
                Err(e) if never_read(&e) && !held && body.unread() => {
                    *lock(&self.health) = Some((Instant::now(), false));
                    if !self.held(hold).await {
                        return self.not_serving(hold);
                    }
                    held = true;
                }
                result => return self.answer(result, client_upgrade.take()),
            }
        }
    }

    /// Wait, at most `hold`, for the function process to serve; whether it does.
    async fn held(&self, hold: Duration) -> bool {
        tokio::time::timeout(hold, self.wait_ready()).await.is_ok()
    }

    fn not_serving(&self, hold: Duration) -> Response<ResponseBody> {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "function process is not serving on {} (restarting?); waited {hold:?}",
                self.upstream_addr
            ),
        )
    }

    /// Send one attempt (over h2c if `h2`), within exec_timeout (`Ok(Err(..))` when it took
    /// longer).
    async fn send(
        &self,
        req: Request<Attempt<Incoming>>,
        h2: bool,
    ) -> Result<Result<Response<Incoming>, Duration>, hyper_util::client::legacy::Error> {
        let client = if h2 { &self.client_h2 } else { &self.client };
        let fut = client.request(req);
        match self.exec_timeout {
            Some(t) => match tokio::time::timeout(t, fut).await {
                Ok(r) => r.map(Ok),
                Err(_) => Ok(Err(t)),
            },
            None => fut.await.map(Ok),
        }
    }

    fn answer(
        &self,
        result: Result<Result<Response<Incoming>, Duration>, hyper_util::client::legacy::Error>,
        client_upgrade: Option<(OnUpgrade, Option<String>)>,
    ) -> Response<ResponseBody> {
        match result {
            Ok(Ok(mut resp)) => {
                resp.headers_mut().remove(handoff::HEADER);
                if let Some((client, handoff)) = client_upgrade {
                    if upgrade::switched(resp.status(), resp.headers()) {
                        let upstream = hyper::upgrade::on(&mut resp);
                        upgrade::keep_upgrade(resp.headers_mut());
                        let pending = Pending::new(client, upstream, handoff);
                        resp.extensions_mut().insert(pending);
                        return resp.map(|b| b.map_err(Into::into).boxed_unsync());
                    }
                }
                let (mut parts, body) = resp.into_parts();
                strip_hop_headers(&mut parts.headers);
                Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
            }
            Ok(Err(t)) => {
                tracing::warn!(timeout = ?t, "upstream exceeded exec_timeout");
                text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!("function exceeded exec_timeout of {t:?}"),
                )
            }
            Err(e) => {
                if e.is_connect() {
                    *lock(&self.health) = Some((Instant::now(), false));
                }
                let msg = error_chain(&e);
                tracing::warn!(error = %msg, "upstream request failed");
                text(
                    StatusCode::BAD_GATEWAY,
                    format!("upstream unreachable: {msg}"),
                )
            }
        }
    }
}

/// Whether a failed attempt cannot have been read by the function: the connection was
/// refused, or reset before any answer. A socket closed with unread data (or already closed
/// when the request arrived) resets; one whose process read the request and then died ends
/// with a plain close instead, and that attempt is not sent again.
fn never_read(e: &hyper_util::client::legacy::Error) -> bool {
    if e.is_connect() {
        return true;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return io.kind() == std::io::ErrorKind::ConnectionReset;
        }
        source = s.source();
    }
    false
}

/// Resolves once shutdown was requested (the borrow guard is dropped inside).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Terminates the child gracefully, then forcibly.
async fn stop_child(child: &mut tokio::process::Child, pid: Option<u32>) {
    let Some(pid) = pid else {
        let _ = child.kill().await;
        return;
    };
    signal_group(pid, libc::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
    signal_group(pid, libc::SIGKILL);
}

fn strip_hop_headers(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
