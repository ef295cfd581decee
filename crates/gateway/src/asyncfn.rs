//! Async calls: `POST /async-function/{name}[.{namespace}][/path]` stores the request (method,
//! extra path, query, headers, body of at most `--max-async-body-bytes`) durably in the queue
//! and answers 202 with `X-Call-Id`; a full queue answers 429, a callback URL aimed at an
//! internal address 400. The queue's workers deliver calls later through [`GatewayDeliver`],
//! which calls the same `invoke::forward` as `/function/*` (so a function at zero is scaled
//! up) without HTTP to self, and counts each attempt as an invocation, as OpenFaaS's queue
//! worker calling through its gateway is counted. Also the Virga dead-letter and queue APIs
//! under `/system/virga/`.

use std::sync::{Arc, Weak};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use virga_queue::{
    Call, Deliver, FunctionSettings, Outcome, PoolConfig, QueueError, SharedQueue, WorkerPool,
};
use virga_types::{headers, Target};

use crate::metrics::FunctionHandle;
use crate::replay::DrainingLimit;
use crate::{ApiError, AppState};

/// Deliveries at once of a function whose instances set no `max_inflight`.
const DEFAULT_CONCURRENCY: usize = 32;
static X_CALL_ID: HeaderName = HeaderName::from_static(headers::X_CALL_ID);
static X_CALLBACK_URL: HeaderName = HeaderName::from_static(headers::X_CALLBACK_URL);
/// Request headers not stored with a call, besides the hop-by-hop ones. `X-Connector` marks
/// a connector's call (its answer may be published to the broker) and `X-Virga-Lambda-Invoke`
/// hands a runtime a raw event (only the authenticated Invoke API may): a client sets neither.
const NOT_STORED: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::HOST,
    HeaderName::from_static(virga_connectors::X_CONNECTOR),
    HeaderName::from_static(headers::X_VIRGA_LAMBDA_INVOKE),
];

/// Settings of async calls.
#[derive(Clone)]
pub struct AsyncConfig {
    /// The worker pool's settings (callbacks included).
    pub pool: PoolConfig,
    /// Largest request body of an async call (413 beyond); also the most of a function's
    /// answer kept for its callback.
    pub max_body_bytes: usize,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        AsyncConfig {
            pool: PoolConfig::default(),
            max_body_bytes: 1 << 20,
        }
    }
}

/// The queue and its workers, once `virga up` enabled them.
pub(crate) struct AsyncCalls {
    pub(crate) queue: SharedQueue,
    pub(crate) pool: Arc<WorkerPool>,
    pub(crate) max_body_bytes: usize,
}

/// Start the worker pool over `queue` and accept async calls on `state`'s gateway.
pub async fn enable_async(
    state: &Arc<AppState>,
    queue: SharedQueue,
    cfg: AsyncConfig,
) -> Result<(), QueueError> {
    if let Some(max) = queue.max_message_bytes() {
        // The defaults match (1 MiB bodies, NATS's 1 MiB max_payload): only calls within a few
        // KiB of the limit do not fit then, and get 413. Warn when many more would not.
        if cfg.max_body_bytes > max + (64 << 10) {
            tracing::warn!(
                "async calls: bodies may be up to {} bytes, but the NATS server stores messages \
                 of at most {max} with headers: larger calls get 413 (raise the server's \
                 max_payload or lower --max-async-body-bytes)",
                cfg.max_body_bytes
            );
        }
    }
    let deliver = Arc::new(GatewayDeliver {
        state: Arc::downgrade(state),
        max_answer: cfg.max_body_bytes,
    });
    let pool = WorkerPool::start(queue.clone(), deliver, cfg.pool).await?;
    if let Ok(functions) = state.store.functions() {
        for f in functions {
            if let Some(h) = state.function_handle(&f.key()) {
                pool.ensure_queue(&h.calls().policy.queue);
            }
        }
    }
    let calls = AsyncCalls {
        queue,
        pool,
        max_body_bytes: cfg.max_body_bytes,
    };
    let _ = state.async_calls.set(calls);
    Ok(())
}

/// Set the queue gauges (depth, in flight) from the queue, for a scrape of `/metrics`.
pub(crate) async fn record_queue_gauges(state: &AppState) {
    let Some(calls) = state.async_calls.get() else {
        return;
    };
    match calls.queue.stats().await {
        Ok(stats) => {
            for s in stats {
                state.metrics.set_queue_depth(&s.queue, s.depth as i64);
                state
                    .metrics
                    .set_queue_inflight(&s.queue, s.inflight as i64);
            }
        }
        Err(e) => tracing::warn!("queue statistics for /metrics: {e}"),
    }
}

pub(crate) fn async_calls(state: &AppState) -> Result<&AsyncCalls, ApiError> {
    state
        .async_calls
        .get()
        .ok_or_else(|| ApiError::Unavailable("async calls are not enabled on this gateway".into()))
}

/// Check an `X-Callback-Url`: an absolute `http://` or `https://` URL whose host the policy
/// allows.
fn callback_url(v: &HeaderValue, policy: &virga_queue::CallbackPolicy) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("X-Callback-Url: {why}"));
    let s = v.to_str().map_err(|_| bad("must be plain ASCII text"))?;
    policy.check_url(s).map_err(|e| bad(&e))?;
    Ok(s.to_string())
}

/// `ANY /async-function/{name}[/path]`: 202 + `X-Call-Id` once the call is durably queued.
pub(crate) async fn accept(State(state): State<Arc<AppState>>, mut req: Request) -> Response {
    let target = match crate::invoke::target_after(&req, "/async-function/") {
        Ok(target) => target,
        Err(e) => return e.into_response(),
    };
    let Some(handle) = state.function_handle(&target.key) else {
        return crate::invoke::not_found(&state, &target).into_response();
    };
    if let Err(refused) = crate::invoke::admit(&state, &target, Some(&handle), &mut req) {
        return *refused;
    }
    match accept_call(&state, target, &handle, req).await {
        Ok(id) => {
            let mut resp = StatusCode::ACCEPTED.into_response();
            resp.headers_mut().insert(X_CALL_ID.clone(), id);
            resp
        }
        Err(e) => e.into_response(),
    }
}

/// Why an async call was not accepted.
pub(crate) enum Refused {
    /// An error of the gateway's.
    Api(ApiError),
    /// The call is too large (413 with this message).
    TooLarge(String),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Refused::Api(e)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Api(e) => e.into_response(),
            Refused::TooLarge(msg) => {
                (StatusCode::PAYLOAD_TOO_LARGE, format!("{msg}\n")).into_response()
            }
        }
    }
}

fn too_large(limit: usize) -> Refused {
    Refused::TooLarge(format!(
        "async call body is larger than the limit of {limit} bytes (virga up \
         --max-async-body-bytes): send a smaller body, or call /function/ synchronously"
    ))
}

async fn accept_call(
    state: &AppState,
    target: Target,
    handle: &FunctionHandle,
    req: Request,
) -> Result<HeaderValue, Refused> {
    let settings = handle.calls();
    let policy = &settings.policy;
    let (parts, body) = req.into_parts();
    let calls = async_calls(state)?;
    let allowed = &calls.pool.config().callback_policy;
    let callback = parts
        .headers
        .get(&X_CALLBACK_URL)
        .map(|v| callback_url(v, allowed))
        .transpose()?;
    let limit = calls.max_body_bytes;
    crate::invoke::declared_length(&parts.headers, limit).map_err(|_| too_large(limit))?;
    // Read past the limit before answering 413, as the sync path does (see DrainingLimit):
    // the connection then stays usable and the client gets its 413.
    let body = axum::body::to_bytes(Body::new(DrainingLimit::new(body, limit)), usize::MAX)
        .await
        .map_err(|_| too_large(limit))?;
    let id = match parts.headers.get(&X_CALL_ID) {
        Some(v) if !v.is_empty() && v.len() <= 256 && v.to_str().is_ok() => v.clone(),
        _ => HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    };
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (k, v) in &parts.headers {
        let hop = virga_http::HOP_BY_HOP.contains(k) || NOT_STORED.contains(k);
        if !hop && k != X_CALLBACK_URL && k != X_CALL_ID {
            headers.push((k.as_str().to_string(), v.as_bytes().to_vec()));
        }
    }
    let call = Call {
        id: id.to_str().unwrap_or_default().to_string(),
        function: target.key,
        queue: policy.queue.clone(),
        method: parts.method.as_str().to_string(),
        path: target.path,
        headers,
        body,
        callback,
        accepted_ms: virga_queue::unix_ms(),
        attempts: 0,
    };
    enqueue(calls, call).await?;
    Ok(id)
}

/// Store `call` durably (429 when the queue is full) and make sure its queue has a worker.
async fn enqueue(calls: &AsyncCalls, call: Call) -> Result<(), Refused> {
    let queue = call.queue.clone();
    calls.queue.enqueue(call).await.map_err(|e| match e {
        QueueError::Full(why) => Refused::Api(ApiError::TooManyRequests(format!(
            "async call refused: {why}; try again later (virga up sets the limits: \
             --async-max-depth, --async-max-bytes and their -per-function forms)"
        ))),
        QueueError::TooLarge(why) => Refused::TooLarge(format!("async call refused: {why}")),
        e => Refused::Api(ApiError::Internal(format!("cannot queue the call: {e}"))),
    })?;
    calls.pool.ensure_queue(&queue);
    Ok(())
}

/// Largest body of an async call on this gateway.
pub(crate) fn max_body_bytes(state: &AppState) -> Result<usize, ApiError> {
    Ok(async_calls(state)?.max_body_bytes)
}

/// Queue a Lambda `Event` invocation of `function` (a deployed one) with request id `id`:
/// the stored headers mark it as one, so its delivery goes with the Lambda retry policy.
pub(crate) async fn accept_lambda(
    state: &AppState,
    function: &str,
    id: &str,
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
) -> Result<(), Refused> {
    let handle = state
        .function_handle(function)
        .ok_or_else(|| ApiError::NotFound(format!("function {function:?} not found")))?;
    let calls = async_calls(state)?;
    let call = Call {
        id: id.to_string(),
        function: function.to_string(),
        queue: handle.calls().policy.queue.clone(),
        method: "POST".into(),
        path: "/".into(),
        headers,
        body,
        callback: None,
        accepted_ms: virga_queue::unix_ms(),
        attempts: 0,
    };
    enqueue(calls, call).await
}

/// Whether a stored call came from the Lambda Invoke API (only it stores the mark: the
/// async route drops the header from what callers send).
fn is_lambda(call: &Call) -> bool {
    call.headers
        .iter()
        .any(|(k, _)| k == headers::X_VIRGA_LAMBDA_INVOKE)
}

/// Delivers queued calls through the gateway's own invoke path.
struct GatewayDeliver {
    state: Weak<AppState>,
    /// Most bytes of a function's answer kept for the callback.
    max_answer: usize,
}

/// Read at most `cap` bytes of `body`; true if there was more.
async fn read_capped(mut body: Body, cap: usize) -> Result<(Bytes, bool), axum::Error> {
    let mut parts: Vec<Bytes> = Vec::new();
    let mut len = 0;
    while let Some(frame) = body.frame().await {
        let Ok(mut data) = frame?.into_data() else {
            continue;
        };
        let room = cap - len;
        let cut = data.len() > room;
        if cut {
            data.truncate(room);
        }
        len += data.len();
        parts.push(data);
        if cut {
            return Ok((concat(parts, len), true));
        }
    }
    Ok((concat(parts, len), false))
}

fn concat(mut parts: Vec<Bytes>, len: usize) -> Bytes {
    if parts.len() == 1 {
        return parts.pop().unwrap_or_default();
    }
    let mut out = Vec::with_capacity(len);
    for p in &parts {
        out.extend_from_slice(p);
    }
    out.into()
}

impl Deliver for GatewayDeliver {
    fn retried(&self, function: &str) {
        if let Some(state) = self.state.upgrade() {
            state.metrics.queue_retry(function);
        }
    }

    fn dead_lettered(&self, function: &str) {
        if let Some(state) = self.state.upgrade() {
            state.metrics.dead_letter(function);
        }
    }

    fn settings(&self, call: &Call) -> Option<FunctionSettings> {
        let state = self.state.upgrade()?;
        let function = call.function.as_str();
        let settings = state.function_handle(function)?.calls();
        let (_, ready) = state.provider.replicas(function);
        let mut concurrency = match settings.per_instance {
            Some(n) => n.saturating_mul(ready.max(1) as usize),
            None => DEFAULT_CONCURRENCY,
        };
        if let Some(cap) = settings.policy.max_inflight {
            concurrency = concurrency.min(cap);
        }
        let policy = if is_lambda(call) {
            &settings.lambda_policy
        } else {
            &settings.policy
        };
        Some(FunctionSettings {
            policy: policy.clone(),
            concurrency,
        })
    }

    fn invoke<'a>(&'a self, call: &'a Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Some(state) = self.state.upgrade() else {
                return failure(503, "the gateway is shutting down".into(), false);
            };
            // Counted like a call through /function/ (only for deployed functions).
            let handle = state.function_handle(&call.function);
            if let Some(h) = &handle {
                h.metrics.started();
            }
            let started = Instant::now();
            let mut outcome = deliver_once(&state, call, self.max_answer).await;
            if is_lambda(call) {
                outcome.function_error = lambda_failed(&outcome);
            }
            if let Some(h) = handle {
                h.metrics.finished(outcome.status, started.elapsed());
                state.metrics.async_delivery(&call.function, outcome.status);
            }
            crate::triggers::answered(&state, call, outcome.status, &outcome.body);
            outcome
        })
    }
}

/// One attempt at `call` through the invoke path.
async fn deliver_once(state: &AppState, call: &Call, max_answer: usize) -> Outcome {
    let mut req = Request::new(Body::from(call.body.clone()));
    req.extensions_mut().insert(crate::calls::Kind::Async);
    *req.method_mut() = match call.method.parse() {
        Ok(m) => m,
        Err(_) => return failure(400, format!("bad method {:?}", call.method), false),
    };
    let h = req.headers_mut();
    for (k, v) in &call.headers {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            h.append(k, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&call.id) {
        h.insert(X_CALL_ID.clone(), v);
    }
    let target = Target::stored(&call.function, &call.path);
    let resp = match crate::invoke::forward(state, &target, req).await {
        Ok(r) => r,
        Err(e) => {
            let unreachable = matches!(e, ApiError::BadGateway(_));
            return failure(e.status().as_u16(), e.to_string(), unreachable);
        }
    };
    let (parts, body) = resp.into_parts();
    let (body, truncated) = match read_capped(body, max_answer).await {
        Ok(b) => b,
        Err(e) => return failure(502, format!("reading the function's answer: {e}"), true),
    };
    Outcome {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect(),
        body,
        truncated,
        connection_failed: false,
        function_error: false,
    }
}

/// Whether a Lambda delivery failed as Lambda counts it: a function error, or a status of 500
/// or more (what the Invoke API answers as a function error for non-Lambda functions).
fn lambda_failed(o: &Outcome) -> bool {
    o.status >= 500
        || o.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(headers::X_AMZ_FUNCTION_ERROR))
}

fn failure(status: u16, message: String, connection_failed: bool) -> Outcome {
    Outcome {
        status,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: message.into(),
        truncated: false,
        connection_failed,
        function_error: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_urls_must_be_absolute_http_or_https() {
        let p = virga_queue::CallbackPolicy::default();
        for ok in ["http://example.com:9000/cb?x=1", "https://example.com/cb"] {
            assert_eq!(callback_url(&HeaderValue::from_static(ok), &p).unwrap(), ok);
        }
        for bad in [
            "not a url",
            "/relative",
            "ftp://x/y",
            "http://",
            "http://127.0.0.1:9000/cb",
        ] {
            let e = callback_url(&HeaderValue::from_static(bad), &p).unwrap_err();
            assert!(e.to_string().starts_with("X-Callback-Url: "), "{bad}: {e}");
        }
    }
}
