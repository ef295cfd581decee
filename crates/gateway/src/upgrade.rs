//! `Upgrade` calls on `/function/{name}[.{namespace}][/path]` (WebSockets, any HTTP/1.1
//! protocol switch): the request goes to an instance with its upgrade headers (`Upgrade`,
//! `Connection: upgrade`, `Sec-WebSocket-*`), and when the function answers `101 Switching
//! Protocols` the client gets the `101` and both upgraded connections are spliced
//! ([`virga_http::upgrade::splice`]: bytes both ways, no frame buffering, back-pressure kept).
//! Where the instance's watchdog takes it (process and runc instances) and the client came
//! over plain TCP, the client's socket is handed to the watchdog instead
//! ([`virga_http::handoff`]), so only the watchdog splices; the handshake's connection to it
//! stays as the lifeline that says why the connection ended, and that the gateway closes to
//! drain it.
//!
//! An open connection is a call in flight: it holds its instance's lease (so `max_inflight`,
//! the autoscaler's load and scale-to-zero see it), is listed in the calls in progress (kind
//! `upgrade`) and counts in `virga_function_connections_open`. It closes when either side
//! does, after the function's idle timeout or lifetime (`virga.connection.*`), or when its
//! instance is removed and the drain grace is over ([`virga_provider::Lease::closing`]). An
//! answer other than `101` goes back as any call's does.

use std::os::fd::{BorrowedFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use virga_http::handoff;
use virga_http::upgrade::{self, End, Limits};
use virga_provider::Lease;
use virga_types::{headers, Target};

use crate::calls::{Kind, Running};
use crate::conn::Clock;
use crate::metrics::FunctionHandle;
use crate::{invoke, ApiError, AppState};

static X_CALL_ID: header::HeaderName = header::HeaderName::from_static(headers::X_CALL_ID);
static X_LAMBDA: header::HeaderName =
    header::HeaderName::from_static(headers::X_VIRGA_LAMBDA_INVOKE);

/// Whether `req` asks to switch protocols.
pub(crate) fn requested(req: &Request) -> bool {
    upgrade::requested(req.version(), req.headers())
}

/// Open an upgraded connection to `target` for `req` (already admitted), recorded in the
/// function's metrics as a call answered `101` (or whatever the function answered instead).
pub(crate) async fn call(state: &AppState, target: &Target, req: Request) -> Response {
    let Some(handle) = state.function_handle(&target.key) else {
        return invoke::not_found(state, target).into_response();
    };
    let started = Instant::now();
    handle.metrics.started();
    let mut resp = match open(state, target, &handle, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    handle
        .metrics
        .finished(resp.status().as_u16(), started.elapsed());
    if handle.sandboxed() {
        invoke::sandbox(resp.headers_mut());
    }
    resp
}

async fn open(
    state: &AppState,
    target: &Target,
    handle: &Arc<FunctionHandle>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    if has_body(req.headers()) {
        return Err(ApiError::BadRequest(
            "an Upgrade request cannot carry a body: send it without one (a WebSocket \
             handshake is a GET with no body)"
                .into(),
        ));
    }
    let client = hyper::upgrade::on(&mut req);
    let (mut parts, _) = req.into_parts();
    // Only the (authenticated) Lambda Invoke API may hand a runtime a raw event, and only
    // the gateway offers a hand-off.
    parts.headers.remove(&X_LAMBDA);
    parts.headers.remove(handoff::HEADER);
    let socket = parts.extensions.get::<ClientSocket>().cloned();
    let protocols: Vec<HeaderValue> = parts
        .headers
        .get_all(header::UPGRADE)
        .iter()
        .cloned()
        .collect();
    // The call headers as on any call, and the upgrade carried on to the instance.
    upgrade::keep_upgrade(&mut parts.headers);
    let call_id = invoke::prepare_headers(&mut parts.headers);
    for p in protocols {
        parts.headers.append(header::UPGRADE, p);
    }
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts.extensions.insert(Kind::Upgrade);
    let running = state.in_progress.begin(&parts, target, &call_id);
    let (lease, result, offered) = send(state, target, &parts, socket.is_some()).await?;
    running.on(lease.instance());
    let waited = state.cfg.upstream_timeout;
    let mut resp = invoke::upstream_answer(state, &target.key, &lease, result, waited)?;
    let accepted = resp.headers_mut().remove(handoff::HEADER);
    if !upgrade::switched(resp.status(), resp.headers()) {
        let resp = invoke::with_call_headers(resp, call_id, started);
        return Ok(crate::calls::hold(resp, lease, running));
    }
    let upstream = hyper::upgrade::on(&mut resp);
    let (mut head, _) = resp.into_parts();
    upgrade::keep_upgrade(&mut head.headers);
    head.headers.insert(X_CALL_ID.clone(), call_id);
    let limits = handle.calls().connections;
    let limits = Limits {
        idle: limits.idle_timeout,
        lifetime: limits.max_lifetime,
    };
    let open = handle.metrics.connection_opened();
    let handoff = match (offered, socket, accepted, lease.handoff()) {
        (Some(id), Some(socket), Some(v), Some(path)) if v == handoff::ACCEPTED => Some(Offer {
            id,
            socket,
            path: path.to_path_buf(),
        }),
        _ => None,
    };
    let ends = Ends {
        client,
        upstream,
        handoff,
    };
    tokio::spawn(spliced(ends, (lease, running), limits, open));
    Ok(Response::from_parts(head, Body::empty()))
}

/// Send the handshake to an instance, on another one if the picked one refuses the
/// connection, offering a hand-off of the client's socket (if it `can_hand_off`) where the
/// instance takes one; the lease, what came of it and the offer's id.
async fn send(
    state: &AppState,
    target: &Target,
    parts: &axum::http::request::Parts,
    can_hand_off: bool,
) -> Result<(Lease, invoke::UpstreamResult, Option<String>), ApiError> {
    let name = &target.key;
    let mut attempt = 0;
    loop {
        let lease = state.provider.lease(name).await.map_err(|e| match e {
            virga_provider::ProviderError::NotFound(_) => invoke::not_found(state, target),
            e => e.into(),
        })?;
        let uri = Uri::builder()
            .scheme("http")
            .authority(lease.addr().to_string())
            .path_and_query(target.path.as_str())
            .build()
            .map_err(|e| ApiError::BadRequest(format!("bad request path: {e}")))?;
        let mut req = Request::new(Body::empty());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.headers_mut() = parts.headers.clone();
        let offer = (can_hand_off && lease.handoff().is_some())
            .then(|| uuid::Uuid::new_v4().simple().to_string());
        if let Some(id) = offer
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            req.headers_mut().insert(handoff::HEADER, id);
        }
        let result =
            tokio::time::timeout(state.cfg.upstream_timeout, state.client.request(req)).await;
        // Refused: the instance died after it was picked; a handshake is safe to send again.
        if matches!(&result, Ok(Err(e)) if e.is_connect()) && attempt < invoke::MAX_RETRIES {
            attempt += 1;
            lease.mark_unreachable();
            continue;
        }
        return Ok((lease, result, offer));
    }
}

/// The client's plain TCP socket and its connection's clock, recorded on upgrade requests
/// for a hand-off.
#[derive(Clone)]
pub(crate) struct ClientSocket {
    pub(crate) fd: RawFd,
    pub(crate) clock: Arc<Clock>,
}

/// Both ends of an upgraded call, and the accepted hand-off, if any.
struct Ends {
    client: OnUpgrade,
    upstream: OnUpgrade,
    handoff: Option<Offer>,
}

/// Splice the client's and the instance's connections once both are handed over (or hand
/// the client's to the instance), holding the lease, the place in the calls in progress and
/// the open-connection count until it ends.
async fn spliced(
    ends: Ends,
    (lease, running): (Lease, Running),
    limits: Limits,
    open: virga_metrics::OpenConnection,
) {
    let (client, upstream) = match tokio::try_join!(ends.client, ends.upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(instance = %lease.instance(), "upgrade was not completed: {e}");
            open.ended("failed");
            return;
        }
    };
    let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    let reason = match ends.handoff {
        Some(offer) => handed(client, upstream, offer, limits, &lease).await,
        None => {
            let end = upgrade::splice(client, upstream, limits, lease.closing()).await;
            reason(&lease, end)
        }
    };
    open.ended(reason);
    drop((lease, running));
}

/// Why a splice ended, as the metrics say it.
fn reason(lease: &Lease, end: End) -> &'static str {
    if let End::Failed(e) = &end {
        tracing::debug!(instance = %lease.instance(), "upgraded connection failed: {e}");
    }
    end.reason()
}

/// An accepted hand-off: its id, the client's socket and the watchdog's hand-off socket.
struct Offer {
    id: String,
    socket: ClientSocket,
    path: PathBuf,
}

/// Hand the client's connection to the instance's watchdog and wait on the `lifeline` (the
/// handshake's connection) for why it ended; closing the lifeline is the drain. Refused, it
/// is spliced here after all.
async fn handed(
    mut client: TokioIo<Upgraded>,
    mut lifeline: TokioIo<Upgraded>,
    offer: Offer,
    limits: Limits,
    lease: &Lease,
) -> &'static str {
    let pending = match buffered(&mut client) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(instance = %lease.instance(), "upgraded client failed: {e}");
            return "failed";
        }
    };
    // SAFETY: `client` is this connection's IO and owns the socket `offer.socket` names (it
    // was recorded when the connection was accepted), so the descriptor stays open for as
    // long as `client` lives, past this borrow's last use in `give`.
    let fd = unsafe { BorrowedFd::borrow_raw(offer.socket.fd) };
    let given = handoff::give(&offer.path, &offer.id, fd, &pending, limits).await;
    if !matches!(given, Ok(handoff::Given::Taken)) {
        if let Err(e) = &given {
            tracing::warn!(instance = %lease.instance(), "hand-off failed, splicing here: {e}");
        }
        if let Err(e) = lifeline.write_all(&pending).await {
            return reason(lease, End::Failed(e));
        }
        let end = upgrade::splice(client, lifeline, limits, lease.closing()).await;
        return reason(lease, end);
    }
    // The watchdog has the socket: let go of ours without a shutdown, keeping the
    // connection's slot at the listener until it ends.
    let _kept = offer.socket.clock.keep();
    drop(client);
    let (mut why, mut reader) = (Vec::new(), (&mut lifeline).take(16));
    tokio::select! {
        _ = reader.read_to_end(&mut why) => {}
        () = lease.closing() => return "drained",
    }
    std::str::from_utf8(&why)
        .ok()
        .and_then(End::reason_named)
        .unwrap_or("failed")
}

/// What the client sent after its handshake that can be read without waiting (hyper's
/// read-ahead first): it travels with the hand-off, the rest stays in the socket.
fn buffered(client: &mut TokioIo<Upgraded>) -> std::io::Result<Vec<u8>> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    while out.len() < handoff::MAX_PENDING - chunk.len() {
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut *client).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the client closed its connection",
                ))
            }
            Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(out)
}

/// Whether a request says it has a body.
fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}
