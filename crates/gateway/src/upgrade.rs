//! `Upgrade` calls on `/function/{name}[.{namespace}][/path]` (WebSockets, any HTTP/1.1
//! protocol switch): the request goes to an instance with its upgrade headers (`Upgrade`,
//! `Connection: upgrade`, `Sec-WebSocket-*`), and when the function answers `101 Switching
//! Protocols` the client gets the `101` and both upgraded connections are spliced
//! ([`virga_http::upgrade::splice`]: bytes both ways, no frame buffering, back-pressure kept).
//!
//! An open connection is a call in flight: it holds its instance's lease (so `max_inflight`,
//! the autoscaler's load and scale-to-zero see it), is listed in the calls in progress (kind
//! `upgrade`) and counts in `virga_function_connections_open`. It closes when either side does, after the function's
//! idle timeout or lifetime (`virga.connection.*`), or when its instance is removed and the
//! drain grace is over ([`virga_provider::Lease::closing`]). An answer other than `101` goes
//! back as any call's does.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use virga_http::upgrade::{self, End, Limits};
use virga_provider::Lease;
use virga_types::{headers, Target};

use crate::calls::{Kind, Running};
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
    // Only the (authenticated) Lambda Invoke API may hand a runtime a raw event.
    parts.headers.remove(&X_LAMBDA);
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
    let (lease, result) = send(state, target, &parts).await?;
    running.on(lease.instance());
    let waited = state.cfg.upstream_timeout;
    let mut resp = invoke::upstream_answer(state, &target.key, &lease, result, waited)?;
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
    tokio::spawn(spliced(client, upstream, (lease, running), limits, open));
    Ok(Response::from_parts(head, Body::empty()))
}

/// Send the handshake to an instance, on another one if the picked one refuses the
/// connection; the lease and what came of it.
async fn send(
    state: &AppState,
    target: &Target,
    parts: &axum::http::request::Parts,
) -> Result<(Lease, invoke::UpstreamResult), ApiError> {
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
        let result =
            tokio::time::timeout(state.cfg.upstream_timeout, state.client.request(req)).await;
        // Refused: the instance died after it was picked; a handshake is safe to send again.
        if matches!(&result, Ok(Err(e)) if e.is_connect()) && attempt < invoke::MAX_RETRIES {
            attempt += 1;
            lease.mark_unreachable();
            continue;
        }
        return Ok((lease, result));
    }
}

/// Splice the client's and the instance's connections once both are handed over, holding
/// the lease, the place in the calls in progress and the open-connection count until it ends.
async fn spliced(
    client: OnUpgrade,
    upstream: OnUpgrade,
    (lease, running): (Lease, Running),
    limits: Limits,
    open: virga_metrics::OpenConnection,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(instance = %lease.instance(), "upgrade was not completed: {e}");
            open.ended("failed");
            return;
        }
    };
    let end = upgrade::splice(
        TokioIo::new(client),
        TokioIo::new(upstream),
        limits,
        lease.closing(),
    )
    .await;
    let reason = match end {
        End::Closed(..) => "closed",
        End::Failed(e) => {
            tracing::debug!(instance = %lease.instance(), "upgraded connection failed: {e}");
            "failed"
        }
        End::Idle => "idle",
        End::Lifetime => "lifetime",
        End::Stopped => "drained",
    };
    open.ended(reason);
    drop((lease, running));
}

/// Whether a request says it has a body.
fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}
