//! `/function/{name}[.{namespace}][/path]`: the synchronous invoke path. It leases a ready
//! instance from the provider (which starts one if the function is at zero), forwards method,
//! extra path, query, headers and a streaming body to the instance's watchdog, and streams the
//! answer back with `X-Call-Id` and `X-Duration-Seconds`. This is the hot path: one lease, one
//! upstream request, no buffering.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use virga_types::{headers, Target};

use crate::long::CallLimits;
use crate::metrics::FunctionHandle;
use crate::replay::BodyTooLarge;
use crate::{ApiError, AppState, Need};
use virga_http::{Replayable, HOP_BY_HOP};

static X_CALL_ID: HeaderName = HeaderName::from_static(headers::X_CALL_ID);
static X_START_TIME: HeaderName = HeaderName::from_static(headers::X_START_TIME);
static X_DURATION: HeaderName = HeaderName::from_static(headers::X_DURATION_SECONDS);
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static(headers::X_FORWARDED_HOST);
static X_LAMBDA: HeaderName = HeaderName::from_static(headers::X_VIRGA_LAMBDA_INVOKE);

/// Annotation with which a function lets its answers run as pages of the API's origin.
pub(crate) const SANDBOX_ANNOTATION: &str = "virga.http.sandbox";

/// Further attempts on another instance when the picked one refuses the connection.
pub(crate) const MAX_RETRIES: usize = 2;

/// `ANY /function/{name}[.{namespace}][/path]`.
pub(crate) async fn proxy(State(state): State<Arc<AppState>>, mut req: Request) -> Response {
    if crate::grpc::is_grpc(req.headers()) {
        return crate::grpc::proxy(&state, req).await;
    }
    let target = match target_after(&req, "/function/") {
        Ok(target) => target,
        Err(e) => return e.into_response(),
    };
    let handle = state.function_handle(&target.key);
    if let Err(refused) = admit(&state, &target, handle.as_deref(), &mut req) {
        return *refused;
    }
    if crate::upgrade::requested(&req) {
        return crate::upgrade::call(&state, &target, req).await;
    }
    call_with(&state, &target, handle, req).await
}

/// Let a public call to `target` through: any call to a public function; to a private one
/// (`virga.private: "true"`), only a caller who may invoke in its namespace, whose
/// credentials are then taken off the request (the function never sees them). `handle` is
/// the function's, looked up once by the caller.
pub(crate) fn admit(
    state: &AppState,
    target: &Target,
    handle: Option<&FunctionHandle>,
    req: &mut Request,
) -> Result<(), Box<Response>> {
    if !handle.is_some_and(|h| h.calls().private) {
        return Ok(());
    }
    let (who, _) = crate::auth::identify(state, req)?;
    who.check(Need::Invoke, &target.namespace)
        .map_err(|e| Box::new(e.into_response()))?;
    req.headers_mut().remove(header::AUTHORIZATION);
    Ok(())
}

/// The invocation target in `req`'s path after `prefix`, parsed once for the whole call.
pub(crate) fn target_after(req: &Request, prefix: &str) -> Result<Target, ApiError> {
    let uri = req.uri();
    let rest = uri.path().strip_prefix(prefix).unwrap_or(uri.path());
    Ok(Target::parse(rest, uri.query())?)
}

/// Make one call to `target`, recording it in the function's metrics.
pub(crate) async fn call(state: &AppState, target: &Target, req: Request) -> Response {
    call_with(state, target, state.function_handle(&target.key), req).await
}

/// [`call`] with the function's handle already looked up.
pub(crate) async fn call_with(
    state: &AppState,
    target: &Target,
    handle: Option<Arc<FunctionHandle>>,
    mut req: Request,
) -> Response {
    // Only the (authenticated) Lambda Invoke API may hand a runtime a raw event.
    req.headers_mut().remove(&X_LAMBDA);
    let started = Instant::now();
    if let Some(h) = &handle {
        h.metrics.started();
    }
    let mut resp = match forward(state, target, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    if let Some(h) = &handle {
        h.metrics
            .finished(resp.status().as_u16(), started.elapsed());
    }
    // A function's page runs in an opaque origin unless the function opts out, so it cannot
    // read or act with anything of the gateway's origin.
    if handle.is_none_or(|h| h.sandboxed()) {
        sandbox(resp.headers_mut());
    }
    resp
}

/// 404 for a call to a function that is not deployed, naming the namespace when that is
/// what is missing.
pub(crate) fn not_found(state: &AppState, target: &Target) -> ApiError {
    let ns = &target.namespace;
    if state.store.namespace(ns).ok().flatten().is_none() {
        return ApiError::NotFound(format!(
            "namespace {ns:?} not found (the call was for function {:?})",
            target.function
        ));
    }
    ApiError::NotFound(format!(
        "function {:?} not found in namespace {ns:?}",
        target.function
    ))
}

/// Add `Content-Security-Policy: sandbox` (next to any policy of the function's own).
pub(crate) fn sandbox(h: &mut HeaderMap) {
    let csp = HeaderValue::from_static("sandbox");
    if !h
        .get_all(header::CONTENT_SECURITY_POLICY)
        .iter()
        .any(|v| v == csp)
    {
        h.append(header::CONTENT_SECURITY_POLICY, csp);
    }
}

/// Whether a deployment's answers are sandboxed (all but `virga.http.sandbox: "false"`).
pub(crate) fn sandboxed(annotations: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(SANDBOX_ANNOTATION))
        .is_none_or(|v| v != "false")
}

/// Forward `req` (its method, headers and body; its path is `target`'s) to an instance of
/// `target`'s function (also used by the async workers).
pub(crate) async fn forward(
    state: &AppState,
    target: &Target,
    req: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let name = &target.key;
    let limits = CallLimits::of(state, name);
    let hop = crate::grpc::Hop::of(parts.version, &parts.headers);
    let overflow = crate::grpc::Overflow::default();
    let max = state.cfg.max_body_bytes;
    let body = match hop.grpc() {
        true => crate::grpc::request_body(&hop, &parts, body, &limits, max, &overflow),
        false => limits.request_body(&parts, body, max)?,
    };
    let call_id = prepare_headers(&mut parts.headers);
    hop.restore(&mut parts.headers);
    let wait = hop.wait(limits.answer);
    let running = state.in_progress.begin(&parts, target, &call_id);
    let body = Replayable::new(body);
    let mut attempt = 0;
    let (lease, result) = loop {
        let lease = state.provider.lease(name).await.map_err(|e| match e {
            virga_provider::ProviderError::NotFound(_) => not_found(state, target),
            e => e.into(),
        })?;
        let uri = Uri::builder()
            .scheme("http")
            .authority(lease.addr().to_string())
            .path_and_query(target.path.as_str())
            .build()
            .map_err(|e| ApiError::BadRequest(format!("bad request path: {e}")))?;
        let Some(attempt_body) = body.attempt() else {
            return Err(ApiError::BadGateway(format!(
                "function {name:?} (instance {}) failed while reading the request",
                lease.instance()
            )));
        };
        let mut req = Request::new(Body::new(attempt_body));
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = hop.version(parts.version);
        *req.headers_mut() = parts.headers.clone();
        running.on(lease.instance());
        let upstream = match hop.h2 {
            true => state.client_h2.request(req),
            false => state.client.request(req),
        };
        let result = tokio::time::timeout(wait, upstream).await;
        // A refused connection, or a dead one that never read the (non-empty) body: the
        // instance died after it was picked, so try another (its replacement if it was the
        // only one). A function cannot have seen a request whose body it never got.
        let retry =
            matches!(&result, Ok(Err(e)) if e.is_connect() || (!body.is_empty() && body.unread()));
        if retry && attempt < MAX_RETRIES {
            attempt += 1;
            lease.mark_unreachable();
            tracing::debug!(function = %name, instance = %lease.instance(), "retrying on another instance");
            continue;
        }
        break (lease, result);
    };
    let resp =
        upstream_answer(state, name, &lease, result, wait).map_err(|e| overflow.or(e, max))?;
    let resp = with_call_headers(resp, call_id, started);
    Ok(crate::calls::hold(resp, lease, running))
}

/// What an upstream call came to: timed out, failed, or answered.
pub(crate) type UpstreamResult = Result<
    Result<hyper::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
    tokio::time::error::Elapsed,
>;

/// The instance's answer, or the error a failed call maps to (an OOM kill, a timeout, an
/// upstream failure).
pub(crate) fn upstream_answer(
    state: &AppState,
    name: &str,
    lease: &virga_provider::Lease,
    result: UpstreamResult,
    waited: std::time::Duration,
) -> Result<hyper::Response<hyper::body::Incoming>, ApiError> {
    // Only a failed call can have been an OOM kill; reading the cgroup costs a file read.
    let failed = !matches!(&result, Ok(Ok(r)) if !r.status().is_server_error());
    if failed && lease.take_oom_kill() {
        state.metrics.oom_kill(name);
        return Err(ApiError::FunctionFailed(format!(
            "function {name:?} ran out of memory and was killed (instance {}): raise limits.memory",
            lease.instance()
        )));
    }
    match result {
        Err(_) => Err(ApiError::Timeout(format!(
            "function {name:?} did not answer within {waited:?} (virga up --upstream-timeout; \
             a function that sets a longer exec_timeout may take that long)"
        ))),
        Ok(Err(e)) => Err(upstream_error(
            name,
            lease.instance(),
            e,
            state.cfg.max_body_bytes,
        )),
        Ok(Ok(resp)) => Ok(resp),
    }
}

/// `resp` without hop-by-hop headers, with `X-Call-Id` and (unless the function set it)
/// `X-Duration-Seconds` since `started`.
pub(crate) fn with_call_headers(
    resp: hyper::Response<hyper::body::Incoming>,
    call_id: HeaderValue,
    started: Instant,
) -> Response {
    let (mut parts, body) = resp.into_parts();
    for h in &HOP_BY_HOP {
        parts.headers.remove(h);
    }
    parts.headers.insert(X_CALL_ID.clone(), call_id);
    if !parts.headers.contains_key(&X_DURATION) {
        let secs = format!("{:.6}", started.elapsed().as_secs_f64());
        if let Ok(v) = HeaderValue::from_str(&secs) {
            parts.headers.insert(X_DURATION.clone(), v);
        }
    }
    Response::from_parts(parts, Body::new(body))
}

/// The request's Content-Length, or 413 when it says the body is over `limit`.
pub(crate) fn declared_length(h: &HeaderMap, limit: usize) -> Result<Option<u64>, ApiError> {
    let declared = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge(limit));
    }
    Ok(declared)
}

/// Drop hop-by-hop headers and add the OpenFaaS call headers; returns the call id.
pub(crate) fn prepare_headers(h: &mut HeaderMap) -> HeaderValue {
    for name in &HOP_BY_HOP {
        h.remove(name);
    }
    if let Some(host) = h.remove(header::HOST) {
        h.insert(X_FORWARDED_HOST.clone(), host);
    }
    let call_id = match h.get(&X_CALL_ID) {
        Some(v) => v.clone(),
        None => {
            let v = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
            h.insert(X_CALL_ID.clone(), v.clone());
            v
        }
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.insert(X_START_TIME.clone(), HeaderValue::from(nanos as u64));
    call_id
}

fn upstream_error(
    name: &str,
    instance: &str,
    e: hyper_util::client::legacy::Error,
    limit: usize,
) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.is::<BodyTooLarge>() {
            return ApiError::TooLarge(limit);
        }
        if let Some(t) = s.downcast_ref::<crate::conn::BodyTimeout>() {
            return ApiError::RequestTimeout(t.to_string());
        }
        source = s.source();
    }
    ApiError::BadGateway(format!(
        "function {name:?} (instance {instance}) did not answer: {e}"
    ))
}
