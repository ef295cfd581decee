//! The calls in progress: every call through `invoke::forward` (a `/function/` call, a Lambda
//! `RequestResponse`, a console call, an async delivery) is in [`InProgress`] from its start
//! until the last byte of its answer was passed on (or its client left), so a streamed answer
//! counts for as long as it streams. `GET /system/virga/calls[?namespace=NS]` lists them, in
//! the namespaces the caller may read. The answer's body also holds the instance's lease, so
//! the instance counts the call as in flight (for `max_inflight`, the autoscaler and scale to
//! zero) until it ends, as its watchdog does.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body as AxumBody;
use axum::extract::{Query, State};
use axum::http::{request::Parts, HeaderValue, Method};
use axum::response::Response;
use axum::{Extension, Json};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde::Serialize;
use virga_provider::Lease;
use virga_types::{split_key, Target};

use crate::namespaces::{resolve, NamespaceQuery};
use crate::{ApiError, AppState, Need, Principal};

/// How a call came: `sync` answers its caller, `async` is a queued call being delivered,
/// `upgrade` an open WebSocket (or other upgraded connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// A call whose caller waits for the answer.
    Sync,
    /// A delivery of a queued call (set as a request extension by the async workers).
    Async,
    /// An upgraded connection (a WebSocket), for as long as it is open.
    Upgrade,
}

/// One call in progress.
struct Entry {
    call_id: HeaderValue,
    /// The function's key (`NAME` or `NAME.NAMESPACE`).
    key: String,
    kind: Kind,
    method: Method,
    /// Its path after the function's name, with the query.
    path: String,
    started_ms: u64,
    started: Instant,
    /// The instance it went to (the last one, after a retry), once leased.
    instance: Mutex<String>,
}

/// The calls in progress on this gateway.
#[derive(Default)]
pub(crate) struct InProgress {
    next: AtomicU64,
    calls: Mutex<HashMap<u64, Arc<Entry>>>,
}

/// A call's place in [`InProgress`], given up when dropped.
pub(crate) struct Running {
    all: Arc<InProgress>,
    n: u64,
    entry: Arc<Entry>,
}

impl InProgress {
    /// Record the call `parts` makes to `target` (with id `call_id`) as started now.
    pub(crate) fn begin(
        self: &Arc<Self>,
        parts: &Parts,
        target: &Target,
        call_id: &HeaderValue,
    ) -> Running {
        let entry = Arc::new(Entry {
            call_id: call_id.clone(),
            key: target.key.clone(),
            kind: parts.extensions.get().copied().unwrap_or(Kind::Sync),
            method: parts.method.clone(),
            path: target.path.clone(),
            started_ms: virga_queue::unix_ms(),
            started: Instant::now(),
            instance: Mutex::new(String::new()),
        });
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(n, entry.clone());
        Running {
            all: self.clone(),
            n,
            entry,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The calls in progress whose namespace `keep` accepts, the oldest first.
    fn list(&self, keep: impl Fn(&str) -> bool) -> Vec<CallInfo> {
        let entries: Vec<Arc<Entry>> = self.lock().values().cloned().collect();
        let mut list: Vec<CallInfo> = entries
            .iter()
            .filter(|e| keep(split_key(&e.key).1))
            .map(|e| CallInfo::of(e))
            .collect();
        list.sort_by(|a, b| b.elapsed_seconds.total_cmp(&a.elapsed_seconds));
        list
    }
}

impl Running {
    /// The call went to instance `id`.
    pub(crate) fn on(&self, id: &str) {
        let mut instance = self
            .entry
            .instance
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        instance.clear();
        instance.push_str(id);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.all.lock().remove(&self.n);
    }
}

/// What `GET /system/virga/calls` shows of a call in progress.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallInfo {
    call_id: String,
    function: String,
    namespace: String,
    kind: Kind,
    method: String,
    /// The path after the function's name, without the query (which may carry secrets).
    path: String,
    /// The instance serving it (empty while it waits for one).
    instance: String,
    /// When it started (RFC 3339, UTC).
    started: String,
    elapsed_seconds: f64,
}

impl CallInfo {
    fn of(e: &Entry) -> CallInfo {
        let (function, namespace) = split_key(&e.key);
        let started = chrono::DateTime::from_timestamp_millis(e.started_ms as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        let elapsed = e.started.elapsed().as_secs_f64();
        CallInfo {
            call_id: String::from_utf8_lossy(e.call_id.as_bytes()).into_owned(),
            function: function.to_string(),
            namespace: namespace.to_string(),
            kind: e.kind,
            method: e.method.to_string(),
            path: e.path.split('?').next().unwrap_or("/").to_string(),
            instance: e.instance.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            started,
            elapsed_seconds: (elapsed * 1000.0).round() / 1000.0,
        }
    }
}

/// `GET /system/virga/calls[?namespace=NS]`: the calls in progress of `NS`, or of every
/// namespace the caller may read.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Json<Vec<CallInfo>>, ApiError> {
    who.check_role(Need::Read)?;
    let only = match q.namespace.as_str() {
        "" => None,
        ns => Some(resolve(&state, &who, Need::Read, ns)?),
    };
    Ok(Json(state.in_progress.list(|ns| {
        who.sees(ns) && only.as_deref().is_none_or(|o| o == ns)
    })))
}

/// `resp`, its body holding the call's `lease` and its place in the calls in progress
/// (`running`) until it is done. When the instance is drained (its grace is over) while a
/// stream of events still runs, the answer ends between two of its frames rather than being
/// cut when the instance stops: server-sent events end as a complete stream (the client
/// reconnects), gRPC with `UNAVAILABLE` trailers (the client retries). Other answers are
/// never ended early: a whole-looking truncated body would hide the loss.
pub(crate) fn hold(resp: Response, lease: Lease, running: Running) -> Response {
    let ct = resp.headers().get(axum::http::header::CONTENT_TYPE);
    let ct = ct.map(|v| v.as_bytes()).unwrap_or_default();
    let drain = if ct.starts_with(b"application/grpc") {
        Drain::Grpc
    } else if ct.starts_with(b"text/event-stream") {
        Drain::Events
    } else {
        Drain::Never
    };
    resp.map(|inner| {
        AxumBody::new(Held {
            inner,
            lease,
            _running: running,
            closing: None,
            drain,
            drained: false,
        })
    })
}

/// How an answer ends when its instance is drained.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Drain {
    /// It is not ended early.
    Never,
    /// It ends as a complete stream.
    Events,
    /// It ends with `UNAVAILABLE` trailers.
    Grpc,
}

/// An answer's body holding what its call keeps until the body is done.
struct Held<B> {
    inner: B,
    lease: Lease,
    _running: Running,
    /// The lease's drain signal, made the first time a drainable answer waits for the
    /// function.
    closing: Option<futures_util::future::BoxFuture<'static, ()>>,
    drain: Drain,
    drained: bool,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Held<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if this.drained {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        // Only a body of unknown length can end early and still be whole.
        if this.drain == Drain::Never || this.inner.size_hint().exact().is_some() {
            return Poll::Pending;
        }
        let lease = &this.lease;
        let closing = this.closing.get_or_insert_with(|| lease.closing_owned());
        if closing.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.drained = true;
        Poll::Ready((this.drain == Drain::Grpc).then(|| Ok(Frame::trailers(unavailable()))))
    }

    fn is_end_stream(&self) -> bool {
        self.drained || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The trailers of a gRPC answer ended by a drain: `UNAVAILABLE`, which clients retry.
fn unavailable() -> axum::http::HeaderMap {
    let mut t = axum::http::HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("14"));
    t.insert(
        "grpc-message",
        HeaderValue::from_static("the function's instance is going away: retry the call"),
    );
    t
}
