//! The Lambda Runtime API (`/2018-06-01/runtime/...`) on its loopback listener: the runtime's
//! long poll for the next event, its result (buffered or streamed), its handler and init
//! errors. Errors are Lambda's `{"errorMessage","errorType"}` JSON.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::errors::{
    api_error, application_json, json_response, posted_error, response_too_large, RESPONSE_LIMIT,
};
use super::runtime::UNLIMITED;
use super::stream::Relay;
use super::{Current, InitFailure, Outcome, Queued, Shared};
use crate::body::ResponseBody;

const REQUEST_ID: HeaderName = HeaderName::from_static("lambda-runtime-aws-request-id");
const DEADLINE_MS: HeaderName = HeaderName::from_static("lambda-runtime-deadline-ms");
const FUNCTION_ARN: HeaderName = HeaderName::from_static("lambda-runtime-invoked-function-arn");
const TRACE_ID: HeaderName = HeaderName::from_static("lambda-runtime-trace-id");
const CLIENT_CONTEXT: HeaderName = HeaderName::from_static("lambda-runtime-client-context");
const ERROR_TYPE: HeaderName = HeaderName::from_static("lambda-runtime-function-error-type");
const RESPONSE_MODE: HeaderName = HeaderName::from_static("lambda-runtime-function-response-mode");

/// Serves the Runtime API until shutdown.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let mut stop = shared.shutdown.subscribe();
    let mut http = http1::Builder::new();
    http.keep_alive(true);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = Arc::clone(&shared);
                let svc = service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    async move { Ok::<_, Infallible>(route(&shared, req).await) }
                });
                let conn = http.serve_connection(TokioIo::new(stream), svc);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "runtime API connection error");
                    }
                });
            }
            _ = super::until(&mut stop, |s| *s) => return,
        }
    }
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<ResponseBody> {
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix("/2018-06-01/runtime/") else {
        return not_found(&path);
    };
    match (req.method(), rest) {
        (&Method::GET, "invocation/next") => next(shared).await,
        (&Method::POST, "init/error") => init_error(shared, req).await,
        (&Method::POST, r) => match r.strip_prefix("invocation/") {
            Some(r) => {
                if let Some(id) = r.strip_suffix("/response") {
                    response(shared, id, req).await
                } else if let Some(id) = r.strip_suffix("/error") {
                    error(shared, id, req).await
                } else {
                    not_found(&path)
                }
            }
            None => not_found(&path),
        },
        _ => not_found(&path),
    }
}

fn not_found(path: &str) -> Response<ResponseBody> {
    api_error(
        StatusCode::NOT_FOUND,
        "InvalidRequest",
        &format!("no Runtime API route {path}"),
    )
}

fn accepted() -> Response<ResponseBody> {
    json_response(
        StatusCode::ACCEPTED,
        Bytes::from_static(b"{\"status\":\"OK\"}"),
    )
}

fn invalid_id(id: &str) -> Response<ResponseBody> {
    api_error(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        &format!("invalid request id {id:?}: it is not the invocation in progress"),
    )
}

/// The long poll: marks the runtime initialised, then waits for an event and hands it over.
async fn next(shared: &Arc<Shared>) -> Response<ResponseBody> {
    shared.state.send_if_modified(|s| {
        let changed = !s.initialised || !s.ever_ready || s.failure.is_some();
        s.initialised = true;
        s.ever_ready = true;
        s.failure = None;
        changed
    });
    let queued = loop {
        let taken = shared.lock().queued.take();
        match taken {
            // Its caller is gone: skip it.
            Some(q) if q.reply.is_closed() => continue,
            Some(q) => break q,
            None => shared.queued_notify.notified().await,
        }
    };
    hand_over(shared, queued)
}

/// Makes `q` the current invocation and answers `/next` with it.
fn hand_over(shared: &Shared, q: Queued) -> Response<ResponseBody> {
    let Queued {
        event,
        handed,
        reply,
    } = q;
    let now = Instant::now();
    let limit = shared.settings().exec_timeout.unwrap_or(UNLIMITED);
    let deadline_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(limit)
        .as_millis();
    shared.lock().current = Some(Current {
        id: event.id.clone(),
        reply: Some(reply),
        deadline: shared.settings().exec_timeout.map(|t| now + t),
    });
    if event.tail {
        shared.logs.start();
    }
    let _ = handed.send(now);
    let mut resp = Response::new(crate::body::full(event.body));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, application_json());
    if let Ok(v) = HeaderValue::from_str(&event.id) {
        h.insert(REQUEST_ID, v);
    }
    h.insert(DEADLINE_MS, HeaderValue::from(deadline_ms as u64));
    h.insert(FUNCTION_ARN, shared.settings().arn.clone());
    if let Ok(v) = HeaderValue::from_str(&trace_id()) {
        h.insert(TRACE_ID, v);
    }
    if let Some(cc) = event.client_context {
        h.insert(CLIENT_CONTEXT, cc);
    }
    resp
}

/// An X-Ray trace header (`Root=1-<epoch hex>-<96 random bits>;Parent=..;Sampled=0`).
fn trace_id() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let root: u128 = rand::random::<u128>() >> 32;
    let parent: u64 = rand::random();
    format!("Root=1-{secs:08x}-{root:024x};Parent={parent:016x};Sampled=0")
}

/// Whether `id` is the invocation in progress.
fn is_current(shared: &Shared, id: &str) -> bool {
    shared
        .lock()
        .current
        .as_ref()
        .is_some_and(|c| c.id == id && c.reply.is_some())
}

/// Ends the current invocation `id` with `outcome`; false when `id` is not current.
fn deliver(shared: &Shared, id: &str, outcome: Outcome) -> bool {
    let current = {
        let mut inner = shared.lock();
        match &inner.current {
            Some(c) if c.id == id => inner.current.take(),
            _ => None,
        }
    };
    match current.and_then(|c| c.reply) {
        Some(reply) => {
            let _ = reply.send(outcome);
            true
        }
        None => false,
    }
}

/// A request body up to [`RESPONSE_LIMIT`]; `None` when it is larger.
async fn read_limited(req: Request<Incoming>) -> Result<Option<Bytes>, Response<ResponseBody>> {
    let mut body = req.into_body();
    super::raw::collect_limited(&mut body, RESPONSE_LIMIT)
        .await
        .map_err(|e| {
            api_error(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                &format!("failed to read the body: {e}"),
            )
        })
}

async fn response(
    shared: &Arc<Shared>,
    id: &str,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    if !is_current(shared, id) {
        return invalid_id(id);
    }
    let content_type = req.headers().get(CONTENT_TYPE).cloned();
    let streaming = req
        .headers()
        .get(RESPONSE_MODE)
        .is_some_and(|m| m.as_bytes().eq_ignore_ascii_case(b"streaming"));
    if streaming {
        return stream_response(shared, id, content_type, req.into_body()).await;
    }
    let body = match read_limited(req).await {
        Ok(Some(body)) => body,
        Ok(None) => {
            deliver(shared, id, Outcome::Error(response_too_large()));
            return api_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                &format!("Exceeded maximum allowed payload size ({RESPONSE_LIMIT} bytes)."),
            );
        }
        Err(resp) => return resp,
    };
    if deliver(shared, id, Outcome::Response { content_type, body }) {
        accepted()
    } else {
        invalid_id(id)
    }
}

/// Hands the streamed body to the caller and answers the runtime when it has ended.
async fn stream_response(
    shared: &Arc<Shared>,
    id: &str,
    content_type: Option<HeaderValue>,
    body: Incoming,
) -> Response<ResponseBody> {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let taken = {
        let mut inner = shared.lock();
        match inner.current.as_mut() {
            Some(c) if c.id == id => c.reply.take().map(|r| (r, c.deadline)),
            _ => None,
        }
    };
    let Some((reply, deadline)) = taken else {
        return invalid_id(id);
    };
    let relay = Relay::new(body, Arc::clone(shared), id.to_owned(), deadline, done_tx);
    let _ = reply.send(Outcome::Stream {
        content_type,
        body: relay,
    });
    let _ = done_rx.await;
    {
        let mut inner = shared.lock();
        if inner.current.as_ref().is_some_and(|c| c.id == id) {
            inner.current = None;
        }
    }
    accepted()
}

async fn error(shared: &Arc<Shared>, id: &str, req: Request<Incoming>) -> Response<ResponseBody> {
    if !is_current(shared, id) {
        return invalid_id(id);
    }
    let error_type = error_type(&req);
    let body = match read_limited(req).await {
        Ok(Some(body)) => posted_error(body, error_type.as_deref()),
        Ok(None) => response_too_large(),
        Err(resp) => return resp,
    };
    if deliver(shared, id, Outcome::Error(body)) {
        accepted()
    } else {
        invalid_id(id)
    }
}

fn error_type(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(ERROR_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The runtime failed to initialise: calls get its error until a restarted runtime asks for
/// an event; this one is stopped.
async fn init_error(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<ResponseBody> {
    let error_type = error_type(&req).unwrap_or_else(|| "Runtime.InitError".into());
    let body = match read_limited(req).await {
        Ok(Some(body)) => posted_error(body, Some(&error_type)),
        Ok(None) => super::errors::error_json(&error_type, "init error too large to show"),
        Err(resp) => return resp,
    };
    tracing::warn!(error = %String::from_utf8_lossy(&body), "Lambda runtime init error");
    shared.state.send_modify(|s| {
        s.initialised = false;
        s.failure = Some(InitFailure::Posted(body));
    });
    shared.kill_current();
    accepted()
}
