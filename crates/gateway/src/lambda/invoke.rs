//! `POST /2015-03-31/functions/{FunctionName}/invocations`: Lambda's `Invoke`. The payload
//! (JSON, at most 6 MiB; an empty one is `{}`) goes to the function through the same invoke
//! path as `/function/` (scale from zero, `max_inflight`, the same metrics), marked with
//! `X-Virga-Lambda-Invoke: 1` so a `mode=lambda` watchdog hands it to the runtime unchanged.
//! `Event` calls go into the durable async queue instead (202), `DryRun` answers 204 once
//! the function is found. A non-Lambda function's answer of 500 or more becomes a function
//! error (`X-Amz-Function-Error: Unhandled`, `errorType` `Function.Http<status>`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use virga_types::{headers, Target};

use super::error::MAX_PAYLOAD;
use super::{resolve, Caller, LambdaError};
use crate::asyncfn::Refused;
use crate::{ApiError, AppState};

static X_AMZ_FUNCTION_ERROR: HeaderName = HeaderName::from_static(headers::X_AMZ_FUNCTION_ERROR);
static X_AMZ_EXECUTED_VERSION: HeaderName =
    HeaderName::from_static(headers::X_AMZ_EXECUTED_VERSION);
static X_AMZ_INVOCATION_TYPE: HeaderName = HeaderName::from_static("x-amz-invocation-type");
static X_AMZ_LOG_TYPE: HeaderName = HeaderName::from_static(headers::X_AMZ_LOG_TYPE);
static X_AMZ_CLIENT_CONTEXT: HeaderName = HeaderName::from_static(headers::X_AMZ_CLIENT_CONTEXT);
static X_AMZN_ERROR_TYPE: HeaderName = HeaderName::from_static(headers::X_AMZN_ERROR_TYPE);
static X_LAMBDA: HeaderName = HeaderName::from_static(headers::X_VIRGA_LAMBDA_INVOKE);
static X_CALL_ID: HeaderName = HeaderName::from_static(headers::X_CALL_ID);

/// Largest `Event` payload (Lambda's asynchronous limit, 1 MB since 2025), unless the
/// gateway's async limit is lower.
const MAX_EVENT_PAYLOAD: usize = 1024 * 1024;

/// `?Qualifier=`.
#[derive(Deserialize)]
pub(crate) struct InvokeQuery {
    #[serde(rename = "Qualifier")]
    pub(crate) qualifier: Option<String>,
}

/// `X-Amz-Invocation-Type`.
enum Kind {
    RequestResponse,
    Event,
    DryRun,
}

/// `POST /2015-03-31/functions/{name}/invocations`.
pub(crate) async fn invoke(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<InvokeQuery>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match invoke_inner(&state, &raw, q, &caller, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn invoke_inner(
    state: &AppState,
    raw: &str,
    q: InvokeQuery,
    caller: &Caller,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, LambdaError> {
    let name = resolve(raw, q.qualifier.as_deref(), caller)?;
    caller.check(crate::Need::Invoke, &name)?;
    if state.function_handle(&name).is_none() {
        return Err(LambdaError::not_found(&caller.arn(&name)));
    }
    let kind = invocation_type(headers)?;
    if let Some(v) = headers.get(&X_AMZ_LOG_TYPE) {
        if v != "None" && v != "Tail" {
            return Err(LambdaError::invalid_parameter(format!(
                "X-Amz-Log-Type {v:?} is not valid: use None or Tail"
            )));
        }
    }
    let payload = payload(body)?;
    let upstream = upstream_headers(headers, &caller.request_id);
    match kind {
        Kind::DryRun => Ok(StatusCode::NO_CONTENT.into_response()),
        Kind::Event => event(state, &name, caller, &upstream, payload).await,
        Kind::RequestResponse => {
            Ok(request_response(state, &name, caller, upstream, payload).await)
        }
    }
}

fn invocation_type(h: &HeaderMap) -> Result<Kind, LambdaError> {
    match h.get(&X_AMZ_INVOCATION_TYPE).map(|v| v.as_bytes()) {
        None | Some(b"RequestResponse") => Ok(Kind::RequestResponse),
        Some(b"Event") => Ok(Kind::Event),
        Some(b"DryRun") => Ok(Kind::DryRun),
        Some(v) => Err(LambdaError::invalid_parameter(format!(
            "X-Amz-Invocation-Type {:?} is not valid: use RequestResponse, Event or DryRun",
            String::from_utf8_lossy(v)
        ))),
    }
}

/// The payload, checked to be JSON as Lambda does; an empty one is `{}`.
fn payload(body: Bytes) -> Result<Bytes, LambdaError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Bytes::from_static(b"{}"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(&body).map_err(|e| {
        LambdaError::invalid_content(format!("Could not parse request body into json: {e}"))
    })?;
    Ok(body)
}

/// The headers the function gets: the Lambda mark, the request id as `X-Call-Id`, and the
/// caller's `X-Amz-Client-Context` and `X-Amz-Log-Type` (never its credentials).
fn upstream_headers(h: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(5);
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out.insert(X_LAMBDA.clone(), HeaderValue::from_static("1"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        out.insert(X_CALL_ID.clone(), v);
    }
    for name in [&X_AMZ_CLIENT_CONTEXT, &X_AMZ_LOG_TYPE] {
        if let Some(v) = h.get(name) {
            out.insert(name.clone(), v.clone());
        }
    }
    out
}

/// `Event`: 202 once the call is durably queued.
async fn event(
    state: &AppState,
    name: &str,
    caller: &Caller,
    upstream: &HeaderMap,
    payload: Bytes,
) -> Result<Response, LambdaError> {
    let limit = crate::asyncfn::max_body_bytes(state)?.min(MAX_EVENT_PAYLOAD);
    if payload.len() > limit {
        return Err(LambdaError::too_large(format!(
            "{} byte payload is too large for the Event invocation type (limit {limit} bytes)",
            payload.len()
        )));
    }
    let stored = upstream
        .iter()
        .filter(|(k, _)| **k != X_CALL_ID)
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    crate::asyncfn::accept_lambda(state, name, &caller.request_id, stored, payload)
        .await
        .map_err(|e| match e {
            Refused::Api(e) => LambdaError::from(e),
            Refused::TooLarge(m) => LambdaError::too_large(m),
        })?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `RequestResponse`: the function's answer, counted in its metrics like a `/function/` call.
async fn request_response(
    state: &AppState,
    name: &str,
    caller: &Caller,
    upstream: HeaderMap,
    payload: Bytes,
) -> Response {
    let mut req = Request::new(Body::from(payload));
    *req.method_mut() = Method::POST;
    *req.headers_mut() = upstream;
    let handle = state.function_handle(name);
    if let Some(h) = &handle {
        h.metrics.started();
    }
    let started = Instant::now();
    let result = crate::invoke::forward(state, &Target::stored(name, "/"), req).await;
    let status = match &result {
        Ok(r) => r.status(),
        Err(e) => e.status(),
    };
    if let Some(h) = &handle {
        h.metrics.finished(status.as_u16(), started.elapsed());
    }
    let mut resp = match result {
        Ok(r) => answer(r).await,
        Err(e) => failed_call(state, name, e, caller),
    };
    let h = resp.headers_mut();
    h.insert(
        X_AMZ_EXECUTED_VERSION.clone(),
        HeaderValue::from_static("$LATEST"),
    );
    crate::invoke::sandbox(h);
    resp
}

/// The Invoke answer for the function's answer `r`.
async fn answer(r: Response) -> Response {
    let status = r.status();
    // A Lambda function's own error, or the watchdog's Lambda-shaped refusal: as it is.
    if r.headers().contains_key(&X_AMZ_FUNCTION_ERROR)
        || r.headers().contains_key(&X_AMZN_ERROR_TYPE)
    {
        return r;
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        return LambdaError::too_many(
            "Rate Exceeded. (every instance of the function is at its max_inflight)".into(),
        )
        .into_response();
    }
    if status.is_server_error() {
        let text = match axum::body::to_bytes(r.into_body(), MAX_PAYLOAD).await {
            Ok(b) => String::from_utf8_lossy(&b).trim_end().to_string(),
            Err(e) => format!("(the answer could not be read: {e})"),
        };
        return function_error(&format!("Function.Http{}", status.as_u16()), &text);
    }
    let (mut parts, body) = r.into_parts();
    parts.status = StatusCode::OK;
    Response::from_parts(parts, body)
}

/// A call that failed in the platform: a timeout or an out-of-memory kill is a function error
/// (as on Lambda), anything else a Lambda API error.
fn failed_call(state: &AppState, name: &str, e: ApiError, caller: &Caller) -> Response {
    let id = &caller.request_id;
    match e {
        ApiError::Timeout(_) => function_error(
            "Sandbox.Timedout",
            &format!(
                "RequestId: {id} Error: Task timed out after {:.2} seconds",
                crate::long::CallLimits::of(state, name)
                    .answer
                    .as_secs_f64()
            ),
        ),
        ApiError::FunctionFailed(m) => function_error(
            "Runtime.OutOfMemory",
            &format!("RequestId: {id} Error: {m}"),
        ),
        e => LambdaError::from(e).into_response(),
    }
}

/// 200 with `X-Amz-Function-Error: Unhandled` and Lambda's error JSON.
fn function_error(kind: &str, message: &str) -> Response {
    let body = serde_json::json!({"errorMessage": message, "errorType": kind});
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        X_AMZ_FUNCTION_ERROR.clone(),
        HeaderValue::from_static("Unhandled"),
    );
    resp
}
