//! A streamed result (`Lambda-Runtime-Function-Response-Mode: streaming`): the runtime's
//! chunks go to the caller as they arrive; error trailers or the deadline cut the stream.
//! A function URL's `application/vnd.awslambda.http-integration-response` stream starts
//! with a JSON prelude and 8 zero bytes ([`Relay::prelude`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper::header::HeaderMap;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use super::Shared;
use crate::body::BoxError;

/// The content type of a stream with an HTTP prelude.
pub const HTTP_INTEGRATION: &str = "application/vnd.awslambda.http-integration-response";
/// The prelude's end.
const DELIMITER: [u8; 8] = [0; 8];
/// The longest prelude looked for.
const PRELUDE_MAX: usize = 64 * 1024;

/// The runtime's streamed body, relayed to the caller.
pub(crate) struct Relay {
    /// Bytes to send before the rest of the stream.
    pending: Option<Bytes>,
    inner: Option<Incoming>,
    shared: Arc<Shared>,
    id: String,
    deadline: Option<Pin<Box<Sleep>>>,
    /// Tells the runtime's POST that the stream is over.
    done: Option<oneshot::Sender<()>>,
}

impl Relay {
    /// Relays `body` of invocation `id`, cut at `deadline`.
    pub(crate) fn new(
        body: Incoming,
        shared: Arc<Shared>,
        id: String,
        deadline: Option<Instant>,
        done: oneshot::Sender<()>,
    ) -> Self {
        Relay {
            pending: None,
            inner: Some(body),
            shared,
            id,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d.into()))),
            done: Some(done),
        }
    }

    fn finish(&mut self) {
        self.inner = None;
        self.deadline = None;
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }

    /// The JSON prelude before the 8 zero bytes, when the stream starts with one; what was
    /// read after it (or everything, without one) is sent first.
    pub(crate) async fn prelude(&mut self) -> Option<Bytes> {
        let mut buf = BytesMut::new();
        loop {
            if let Some(pos) = buf.windows(DELIMITER.len()).position(|w| w == DELIMITER) {
                let rest = buf.split_off(pos + DELIMITER.len());
                buf.truncate(pos);
                self.pending = (!rest.is_empty()).then(|| rest.freeze());
                return Some(buf.freeze());
            }
            if buf.len() > PRELUDE_MAX {
                break;
            }
            match self.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => buf.extend_from_slice(&data),
                    Err(_) => break,
                },
                _ => break,
            }
        }
        self.pending = (!buf.is_empty()).then(|| buf.freeze());
        None
    }

    /// The deadline passed: the runtime is killed (and started again).
    fn expire(&mut self) -> BoxError {
        let limit = self.shared.settings().exec_timeout.unwrap_or_default();
        self.shared.expire(&self.id, limit);
        self.finish();
        "Task timed out".into()
    }

    /// The error trailers of a stream that failed (logged), if any.
    fn trailer_error(&self, trailers: &HeaderMap) -> Option<BoxError> {
        let kind = trailers.get("lambda-runtime-function-error-type")?;
        let kind = String::from_utf8_lossy(kind.as_bytes()).into_owned();
        let body = trailers
            .get("lambda-runtime-function-error-body")
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .ok()
            })
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        tracing::warn!(request_id = %self.id, error_type = %kind, error = %body, "streamed response failed");
        Some(format!("{kind}: {body}").into())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(first) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if polled.is_pending() {
            if let Some(d) = this.deadline.as_mut() {
                if d.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(this.expire())));
                }
            }
            return Poll::Pending;
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(frame) => {
                    let err = frame.trailers_ref().and_then(|t| this.trailer_error(t));
                    this.finish();
                    Poll::Ready(err.map(Err))
                }
            },
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            _ => {
                this.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.inner.is_none()
    }
}
