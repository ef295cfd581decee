//! The gateway's listeners, served with hyper directly (HTTP/1.1 and HTTP/2 on the same port:
//! h2c with prior knowledge, or ALPN `h2` over TLS, see [`crate::tls`]) so that no client can hold
//! the platform with slow or idle connections: a request head must arrive within
//! `header_read_timeout`, a kept-alive connection may idle for `idle_timeout`, a request body
//! may pause for `body_read_timeout`, and each listener caps its connections with a reserve for
//! `/system/*` and `/healthz` ([`crate::limit`]). Connections are accepted as fast as they come,
//! so the kernel's backlog never holds the operator's request behind an attacker's.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tower_service::Service;

use crate::conn::{Busy, Clock, GuardedIo, Limits, PauseLimit, TimedBody, Tracked};
use crate::limit::{Admission, Limiter};
use crate::tls::Tls;
use crate::upgrade::ClientSocket;

/// How the listeners treat their connections.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Longest time a client may take to send a request head (request line and headers).
    pub header_read_timeout: Duration,
    /// Longest time a kept-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Longest pause in the arrival of a request body.
    pub body_read_timeout: Duration,
    /// Connections the API listener serves on every route.
    pub max_connections: usize,
    /// Further connections per listener served only for `/system/*` and `/healthz`; also the
    /// console listener's cap.
    pub reserved_connections: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 4096,
            reserved_connections: 64,
        }
    }
}

/// The address a `/system` request came from (set only on `/system` requests, for the
/// sign-in backoff).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) IpAddr);

/// What every connection of one listener shares.
struct Shared {
    router: Router,
    limits: Limits,
    body_timeout: Duration,
    http: auto::Builder<TokioExecutor>,
    /// Reserve connections serve one request each.
    http_once: auto::Builder<TokioExecutor>,
    /// HTTPS, when configured.
    tls: Option<Tls>,
}

/// Requests one HTTP/2 connection may have in progress at once (so a connection cap of N holds
/// at most N × this many requests).
const MAX_STREAMS: u32 = 100;

/// The answer to a connection beyond every slot, written without waiting, before it is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; \
charset=utf-8\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 58\r\n\r\n\
the gateway is at its connection limit: retry in a moment\n";

/// Serve `router` on `listener` (over `tls` if given) under `limiter` until `stop` says so;
/// connection tasks hold `open` until they end.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    cfg: &ServeConfig,
    tls: Option<Tls>,
    limiter: Arc<Limiter>,
    mut stop: watch::Receiver<bool>,
    open: watch::Receiver<()>,
) {
    let mut http = auto::Builder::new(TokioExecutor::new());
    // The connection's clock enforces the head timeout (hyper's own would also end idle
    // connections at the head timeout).
    http.http1().header_read_timeout(None);
    http.http2().max_concurrent_streams(MAX_STREAMS);
    let mut http_once = http.clone();
    http_once.http1().keep_alive(false);
    let shared = Arc::new(Shared {
        router,
        limits: Limits {
            head: cfg.header_read_timeout,
            idle: cfg.idle_timeout,
        },
        body_timeout: cfg.body_read_timeout,
        http,
        http_once,
        tls,
    });
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) {
                    // Out of file descriptors, most likely: give closing connections a moment.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let (slot, once) = match limiter.admit() {
            Admission::Public(slot) => (slot, false),
            Admission::Reserve(slot) => (slot, true),
            Admission::Refused => {
                // Over TLS the plain answer would be noise: the client sees a closed connection.
                if shared.tls.is_none() {
                    let _ = stream.try_write(REFUSED);
                }
                continue;
            }
        };
        let shared = shared.clone();
        let stop = stop.clone();
        let open = open.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, slot.clock().clone(), once, &shared, stop).await;
            drop(open);
            // An upgraded connection keeps its slot while it is open (not the shutdown's wait:
            // its instance going away ends it).
            slot.clock().upgrade_ended().await;
            drop(slot);
        });
    }
}

/// Completes once the listeners are told to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    clock: Arc<Clock>,
    once: bool,
    shared: &Shared,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let _ = virga_http::keep_alive(&stream);
    let socket = ClientSocket {
        fd: stream.as_raw_fd(),
        clock: clock.clone(),
    };
    let io = GuardedIo::new(stream, clock.clone(), shared.limits, once);
    let conn = Conn { peer, clock, once };
    match &shared.tls {
        None => serve_io(io, conn, Some(socket), shared, stop).await,
        // The handshake's reads are held to the request head's limit, as a head's are.
        Some(tls) => match tls.accept(io).await {
            Ok(io) => serve_io(io, conn, None, shared, stop).await,
            Err(e) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
        },
    }
}

/// Serve HTTP/1.1 or HTTP/2 (whichever the client speaks) on `io` until it ends, or
/// gracefully once told to stop.
async fn serve_io<I>(
    io: I,
    Conn { peer, clock, once }: Conn,
    socket: Option<ClientSocket>,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let served = Arc::new(Notify::new());
    let service = ConnService {
        router: shared.router.clone(),
        clock,
        socket,
        peer: peer.ip(),
        once: once.then(|| served.clone()),
        body_timeout: shared.body_timeout,
    };
    let http = if once {
        &shared.http_once
    } else {
        &shared.http
    };
    let conn = http.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stopped(&mut stop) => shut_down(conn).await,
        // A reserve connection over HTTP/2 ends after its first request, as over HTTP/1.1.
        _ = served.notified() => shut_down(conn).await,
    };
    if let Err(e) = result {
        tracing::debug!(%peer, "connection ended: {e}");
    }
}

/// Finish the requests in progress on `conn`, take no more, and wait for it to end.
async fn shut_down<C: GracefulConnection>(mut conn: Pin<&mut C>) -> Result<(), C::Error> {
    conn.as_mut().graceful_shutdown();
    conn.await
}

/// One accepted connection.
struct Conn {
    peer: SocketAddr,
    clock: Arc<Clock>,
    /// A reserve connection (one request).
    once: bool,
}

/// Serves the requests of one connection through the router.
struct ConnService {
    router: Router,
    clock: Arc<Clock>,
    /// The client's plain TCP socket (not over TLS), for an upgrade's hand-off.
    socket: Option<ClientSocket>,
    peer: IpAddr,
    /// A reserve connection (only `/system/*` and `/healthz`), told when its request began.
    once: Option<Arc<Notify>>,
    body_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Tracked<Body>>;
    type Error = Infallible;
    type Future = Reply;

    fn call(&self, req: Request<Incoming>) -> Reply {
        let Some(busy_conn) = self.clock.begin() else {
            return Reply::now(busy("this connection was closed to make room"), None);
        };
        let (mut parts, body) = req.into_parts();
        if parts.version == hyper::Version::HTTP_2 {
            self.clock.set_multiplexed();
            if let Some(served) = &self.once {
                served.notify_one();
            }
            // HTTP/2 carries the host as `:authority`: give the routes the header HTTP/1.1 has.
            if let Some(host) = parts.uri.authority().map(|a| a.as_str()) {
                if let Ok(v) = HeaderValue::from_str(host) {
                    parts.headers.entry(header::HOST).or_insert(v);
                }
            }
        }
        let path = parts.uri.path();
        let system = path == "/system" || path.starts_with("/system/");
        if self.once.is_some() && !system && path != "/healthz" {
            let resp = busy(
                "the gateway is at its connection limit: only /system and /healthz are served \
                 on this connection; retry in a moment",
            );
            return Reply::now(resp, Some(busy_conn));
        }
        if system {
            parts.extensions.insert(ClientAddr(self.peer));
        }
        let upgrade = virga_http::upgrade::requested(parts.version, &parts.headers);
        if let (true, Some(socket)) = (upgrade, &self.socket) {
            parts.extensions.insert(socket.clone());
        }
        let pause = PauseLimit::new(self.body_timeout);
        parts.extensions.insert(pause.clone());
        let req = Request::from_parts(parts, TimedBody::new(body, pause));
        Reply {
            inner: Inner::Route(self.router.clone().call(req)),
            busy: Some(busy_conn),
            upgrade,
        }
    }
}

fn busy(message: &str) -> Response<Body> {
    let mut resp = (StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n")).into_response();
    let h = resp.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The answer to one request, its body tracked so the connection's clock knows when it is done
/// (or the request's end, if it is dropped unanswered: a reset HTTP/2 stream).
pub(crate) struct Reply {
    inner: Inner,
    busy: Option<Busy>,
    /// The request asked to switch protocols.
    upgrade: bool,
}

enum Inner {
    Route(axum::routing::future::RouteFuture<Infallible>),
    Now(Option<Response<Body>>),
}

impl Reply {
    fn now(resp: Response<Body>, busy: Option<Busy>) -> Reply {
        Reply {
            inner: Inner::Now(Some(resp)),
            busy,
            upgrade: false,
        }
    }
}

impl Future for Reply {
    type Output = Result<Response<Tracked<Body>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let resp = match &mut this.inner {
            Inner::Route(fut) => match Pin::new(fut).poll(cx) {
                Poll::Ready(Ok(resp)) => resp,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => return Poll::Pending,
            },
            Inner::Now(resp) => resp
                .take()
                .unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        };
        let busy = this.busy.take();
        if this.upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(b) = &busy {
                b.upgraded();
            }
        }
        Poll::Ready(Ok(resp.map(|b| Tracked::new(b, busy))))
    }
}

/// The listeners' stop signal and the count of connections still open.
pub(crate) struct Lifecycle {
    stop: watch::Sender<bool>,
    /// Every accept loop and connection task holds one of its receivers.
    open: watch::Sender<()>,
}

impl Lifecycle {
    /// Nothing stopped yet.
    pub(crate) fn new() -> Lifecycle {
        Lifecycle {
            stop: watch::channel(false).0,
            open: watch::channel(()).0,
        }
    }

    /// What an accept loop needs: the stop signal and a handle that counts as open.
    pub(crate) fn handles(&self) -> (watch::Receiver<bool>, watch::Receiver<()>) {
        (self.stop.subscribe(), self.open.subscribe())
    }

    /// Stop accepting and shut connections down gracefully (now); the future completes once
    /// every connection has ended.
    pub(crate) fn shut_down(self) -> impl Future<Output = ()> {
        self.stop.send_replace(true);
        async move { self.open.closed().await }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_well_formed() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
