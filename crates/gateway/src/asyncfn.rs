//! Async calls: `POST /async-function/{name}[.{namespace}][/path]` stores the request (method,
//! extra path, query, headers, body) durably in the queue and answers 202 with `X-Call-Id`;
//! the queue's workers deliver it later through [`GatewayDeliver`], which calls the same
//! `invoke::forward` as `/function/*` (so a function at zero is scaled up), without HTTP to
//! self. Also the Virga dead-letter and queue APIs under `/system/virga/`.

use std::sync::{Arc, Weak};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::future::BoxFuture;
use serde::Serialize;
use virga_queue::{
    Call, DeadLetterInfo, Deliver, FunctionPolicy, FunctionSettings, Outcome, PoolConfig,
    PoolCounters, QueueStats, SharedQueue, WorkerPool,
};

use crate::functions::{load, split_namespace};
use crate::replay::DrainingLimit;
use crate::{ApiError, AppState};

/// Deliveries at once of a function whose instances set no `max_inflight`.
const DEFAULT_CONCURRENCY: usize = 32;
static X_CALL_ID: HeaderName = HeaderName::from_static("x-call-id");
static X_CALLBACK_URL: HeaderName = HeaderName::from_static("x-callback-url");
/// Request headers not stored with a call, besides the hop-by-hop ones.
const NOT_STORED: [HeaderName; 2] = [header::CONTENT_LENGTH, header::HOST];

/// The queue and its workers, once `virga up` enabled them.
pub(crate) struct AsyncCalls {
    queue: SharedQueue,
    pool: Arc<WorkerPool>,
}

/// Start the worker pool over `queue` and accept async calls on `state`'s gateway.
pub async fn enable_async(state: &Arc<AppState>, queue: SharedQueue, cfg: PoolConfig) {
    let deliver = Arc::new(GatewayDeliver(Arc::downgrade(state)));
    let pool = WorkerPool::start(queue.clone(), deliver, cfg).await;
    if let Ok(functions) = state.store.functions() {
        for f in functions {
            if let Ok(p) = FunctionPolicy::from_annotations(f.deployment.annotations.as_ref()) {
                pool.ensure_queue(&p.queue);
            }
        }
    }
    let _ = state.async_calls.set(AsyncCalls { queue, pool });
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

fn async_calls(state: &AppState) -> Result<&AsyncCalls, ApiError> {
    state
        .async_calls
        .get()
        .ok_or_else(|| ApiError::Unavailable("async calls are not enabled on this gateway".into()))
}

/// `/async-function/NAME.NS/a/b` → ("NAME.NS", "/a/b").
fn split_path(path: &str) -> (&str, &str) {
    let rest = path.strip_prefix("/async-function/").unwrap_or(path);
    match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    }
}

/// Check an `X-Callback-Url`: an absolute `http://` URL with a host.
fn callback_url(v: &HeaderValue) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("X-Callback-Url: {why}"));
    let s = v.to_str().map_err(|_| bad("must be plain ASCII text"))?;
    let uri: Uri = s.parse().map_err(|_| bad(&format!("{s:?} is not a URL")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("https callbacks are not supported yet: use http://")),
        _ => return Err(bad(&format!("{s:?} is not an absolute http:// URL"))),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad(&format!("{s:?} has no host")));
    }
    Ok(s.to_string())
}

/// `ANY /async-function/{name}[/path]`: 202 + `X-Call-Id` once the call is durably queued.
pub(crate) async fn accept(State(state): State<Arc<AppState>>, req: Request) -> Response {
    match accept_call(&state, req).await {
        Ok(id) => {
            let mut resp = StatusCode::ACCEPTED.into_response();
            resp.headers_mut().insert(X_CALL_ID.clone(), id);
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn accept_call(state: &AppState, req: Request) -> Result<HeaderValue, ApiError> {
    let (parts, body) = req.into_parts();
    let (full_name, rest) = split_path(parts.uri.path());
    let name = split_namespace(full_name)?.to_string();
    let f = load(state, &name)?;
    let policy = FunctionPolicy::from_annotations(f.deployment.annotations.as_ref())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let calls = async_calls(state)?;
    let callback = parts
        .headers
        .get(&X_CALLBACK_URL)
        .map(callback_url)
        .transpose()?;
    let limit = state.cfg.max_body_bytes;
    crate::invoke::declared_length(&parts.headers, limit)?;
    // Read past the limit before answering 413, as the sync path does (see DrainingLimit):
    // the connection then stays usable and the client gets its 413.
    let body = axum::body::to_bytes(Body::new(DrainingLimit::new(body, limit)), usize::MAX)
        .await
        .map_err(|_| ApiError::TooLarge(limit))?;
    let id = match parts.headers.get(&X_CALL_ID) {
        Some(v) if !v.is_empty() && v.len() <= 256 && v.to_str().is_ok() => v.clone(),
        _ => HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    };
    let mut headers = Vec::with_capacity(parts.headers.len());
    for (k, v) in &parts.headers {
        let hop = crate::invoke::HOP_BY_HOP.contains(k) || NOT_STORED.contains(k);
        if !hop && k != X_CALLBACK_URL && k != X_CALL_ID {
            headers.push((k.as_str().to_string(), v.as_bytes().to_vec()));
        }
    }
    let path = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    };
    let call = Call {
        id: id.to_str().unwrap_or_default().to_string(),
        function: name,
        queue: policy.queue.clone(),
        method: parts.method.as_str().to_string(),
        path,
        headers,
        body,
        callback,
        accepted_ms: virga_queue::unix_ms(),
        attempts: 0,
    };
    calls
        .queue
        .enqueue(call)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot queue the call: {e}")))?;
    calls.pool.ensure_queue(&policy.queue);
    Ok(id)
}

/// Delivers queued calls through the gateway's own invoke path.
struct GatewayDeliver(Weak<AppState>);

impl Deliver for GatewayDeliver {
    fn retried(&self, function: &str) {
        if let Some(state) = self.0.upgrade() {
            state.metrics.queue_retry(function);
        }
    }

    fn dead_lettered(&self, function: &str) {
        if let Some(state) = self.0.upgrade() {
            state.metrics.dead_letter(function);
        }
    }

    fn settings(&self, function: &str) -> Option<FunctionSettings> {
        let state = self.0.upgrade()?;
        let f = state.store.function(function).ok()??;
        let policy =
            FunctionPolicy::from_annotations(f.deployment.annotations.as_ref()).unwrap_or_default();
        let per_instance = f
            .deployment
            .env_vars
            .get("max_inflight")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0);
        let (_, ready) = state.provider.replicas(function);
        let mut concurrency = match per_instance {
            Some(n) => n.saturating_mul(ready.max(1) as usize),
            None => DEFAULT_CONCURRENCY,
        };
        if let Some(cap) = policy.max_inflight {
            concurrency = concurrency.min(cap);
        }
        Some(FunctionSettings {
            policy,
            concurrency,
        })
    }

    fn invoke<'a>(&'a self, call: &'a Call) -> BoxFuture<'a, Outcome> {
        Box::pin(async move {
            let Some(state) = self.0.upgrade() else {
                return failure(503, "the gateway is shutting down".into(), false);
            };
            let mut req = Request::new(Body::from(call.body.clone()));
            *req.method_mut() = match call.method.parse() {
                Ok(m) => m,
                Err(_) => return failure(400, format!("bad method {:?}", call.method), false),
            };
            *req.uri_mut() = match format!("/function/{}{}", call.function, call.path).parse() {
                Ok(u) => u,
                Err(_) => return failure(400, format!("bad path {:?}", call.path), false),
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
            let resp = match crate::invoke::forward(&state, req).await {
                Ok(r) => r,
                Err(e) => {
                    let unreachable = matches!(e, ApiError::BadGateway(_));
                    return failure(e.status().as_u16(), e.to_string(), unreachable);
                }
            };
            let (parts, body) = resp.into_parts();
            let body = match axum::body::to_bytes(body, state.cfg.max_body_bytes).await {
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
                connection_failed: false,
            }
        })
    }
}

fn failure(status: u16, message: String, connection_failed: bool) -> Outcome {
    Outcome {
        status,
        headers: vec![("content-type".into(), b"text/plain".to_vec())],
        body: message.into(),
        connection_failed,
    }
}

/// `GET /system/virga/dead-letters`.
pub(crate) async fn list_dead(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<DeadLetterInfo>>, ApiError> {
    let letters = async_calls(&state)?
        .queue
        .dead_letters()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(letters.iter().map(DeadLetterInfo::from).collect()))
}

/// `POST /system/virga/dead-letters/{id}/retry`: back on its queue, attempts reset.
pub(crate) async fn retry_dead(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let calls = async_calls(&state)?;
    let found = calls
        .queue
        .retry_dead_letter(&id, virga_queue::unix_ms())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if !found {
        return Err(ApiError::NotFound(format!("dead letter {id:?} not found")));
    }
    for s in calls.queue.known_queues().await {
        calls.pool.ensure_queue(&s);
    }
    Ok(StatusCode::ACCEPTED)
}

/// What `DELETE /system/virga/dead-letters` answers.
#[derive(Serialize)]
pub(crate) struct Purged {
    purged: usize,
}

/// `DELETE /system/virga/dead-letters`: drop them all.
pub(crate) async fn purge_dead(
    State(state): State<Arc<AppState>>,
) -> Result<Json<Purged>, ApiError> {
    let purged = async_calls(&state)?
        .queue
        .purge_dead_letters()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(Purged { purged }))
}

/// What `GET /system/virga/queues` answers.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueuesReport {
    backend: &'static str,
    queues: Vec<QueueStats>,
    #[serde(flatten)]
    counters: PoolCounters,
}

/// `GET /system/virga/queues`: depth, in-flight and dead letters per queue.
pub(crate) async fn queues(
    State(state): State<Arc<AppState>>,
) -> Result<Json<QueuesReport>, ApiError> {
    let calls = async_calls(&state)?;
    let queues = calls
        .queue
        .stats()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(QueuesReport {
        backend: calls.queue.backend(),
        queues,
        counters: calls.pool.counters(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_async_paths() {
        assert_eq!(split_path("/async-function/echo"), ("echo", "/"));
        assert_eq!(
            split_path("/async-function/echo.openfaas-fn/a/b"),
            ("echo.openfaas-fn", "/a/b")
        );
    }

    #[test]
    fn callback_urls_must_be_absolute_http() {
        let ok = HeaderValue::from_static("http://127.0.0.1:9000/cb?x=1");
        assert_eq!(callback_url(&ok).unwrap(), "http://127.0.0.1:9000/cb?x=1");
        for bad in [
            "not a url",
            "/relative",
            "ftp://x/y",
            "https://x/y",
            "http://",
        ] {
            assert!(
                callback_url(&HeaderValue::from_static(bad)).is_err(),
                "{bad}"
            );
        }
    }
}
