//! Response body types shared by all modes: a boxed body alias, a body that
//! streams a child's stdout, and a wrapper that keeps a guard alive until the
//! body is finished (so in-flight accounting covers streamed responses).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncRead, ReadBuf};

/// Error type carried by response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every watchdog response.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Read size for streamed stdout.
const CHUNK: usize = 16 * 1024;

/// A complete body from bytes.
pub fn full(data: impl Into<Bytes>) -> ResponseBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A plain-text response with the given status.
pub fn text(status: StatusCode, msg: impl Into<String>) -> Response<ResponseBody> {
    let mut msg = msg.into();
    if !msg.ends_with('\n') {
        msg.push('\n');
    }
    let mut resp = Response::new(full(msg));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The 500 answer (and log line) for a function process that could not be started.
pub fn spawn_failed(program: &str, e: &std::io::Error) -> Response<ResponseBody> {
    tracing::error!(program, error = %e, "failed to start function process");
    text(StatusCode::INTERNAL_SERVER_ERROR, spawn_error(program, e))
}

/// What went wrong starting `program`, in words that say what to fix.
pub fn spawn_error(program: &str, e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "command not found: {program:?} is not a program on the function's PATH \
             (check fprocess, or give its full path)"
        ),
        std::io::ErrorKind::PermissionDenied => {
            format!("cannot run {program:?}: permission denied (is it executable?)")
        }
        _ => format!("failed to start function process {program:?}: {e}"),
    }
}

/// Streams an `AsyncRead` (a child's stdout) as body frames, after an
/// optional first chunk that was already read.
pub struct ReaderBody<R> {
    first: Option<Bytes>,
    reader: Option<R>,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> ReaderBody<R> {
    /// Creates a body that yields `first` and then everything read from `reader`.
    pub fn new(first: Option<Bytes>, reader: R) -> Self {
        ReaderBody {
            first,
            reader: Some(reader),
            buf: Vec::new(),
        }
    }
}

impl<R: AsyncRead + Unpin> Body for ReaderBody<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        let Some(reader) = this.reader.as_mut() else {
            return Poll::Ready(None);
        };
        if this.buf.is_empty() {
            this.buf = vec![0; CHUNK];
        }
        let mut rb = ReadBuf::new(&mut this.buf);
        match Pin::new(reader).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                this.reader = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Ok(())) => {
                let filled = rb.filled();
                if filled.is_empty() {
                    this.reader = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(Frame::data(Bytes::copy_from_slice(filled)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.reader.is_none()
    }
}

/// Wraps a body so that `guard` is dropped only when the body is dropped.
pub struct Guarded<G> {
    inner: ResponseBody,
    _guard: G,
}

/// Attaches `guard` to `body`, releasing it when the response is fully sent or aborted.
pub fn with_guard<G: Send + Unpin + 'static>(body: ResponseBody, guard: G) -> ResponseBody {
    Guarded {
        inner: body,
        _guard: guard,
    }
    .boxed_unsync()
}

impl<G: Unpin> Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
