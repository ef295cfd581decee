//! gRPC through the gateway. A gRPC call (`content-type: application/grpc*`), like any
//! HTTP/2 request, goes on to the watchdog over HTTP/2 (h2c) with both bodies streamed and the
//! trailers (`grpc-status`, `grpc-message`) passed through, so unary and streaming calls all
//! work end to end. A call reaches its function by path, `/function/NAME[.NS]/pkg.Service/Method`
//! (the function sees `/pkg.Service/Method`), or, for stubs that cannot change their paths, by
//! the metadata `x-virga-function: NAME[.NS]` on `/pkg.Service/Method`. A `grpc-timeout`
//! shorter than `--upstream-timeout` bounds the gateway's wait too. What the gateway (or a
//! watchdog) answers itself is turned into a gRPC status with its message, since gRPC clients
//! only show an HTTP status code. `--max-body-bytes` bounds each request message, not the
//! call's messages together ([`MessageLimit`]): a stream may run for hours.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{StatusCode, Version};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use virga_types::Target;

use crate::conn::PauseLimit;
use crate::long::CallLimits;
use crate::replay::BodyTooLarge;
use crate::{ApiError, AppState};

/// The metadata that names the function of a call made on a bare gRPC path.
pub(crate) const FUNCTION_HEADER: &str = "x-virga-function";

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// How much of a non-gRPC answer becomes the status message.
const MESSAGE_BYTES: usize = 1024;

/// Whether `h` says the request (or answer) is gRPC.
pub(crate) fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// How one call goes on to the watchdog.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop {
    /// Over HTTP/2 (h2c): a gRPC call or an HTTP/2 request.
    pub(crate) h2: bool,
    grpc: bool,
    /// The client's `grpc-timeout`, if any.
    deadline: Option<Duration>,
}

impl Hop {
    /// The hop for a request of `version` with headers `h` (before hop-by-hop headers go).
    pub(crate) fn of(version: Version, h: &HeaderMap) -> Hop {
        let grpc = is_grpc(h);
        Hop {
            h2: grpc || version == Version::HTTP_2,
            grpc,
            deadline: grpc
                .then(|| h.get(&GRPC_TIMEOUT))
                .flatten()
                .and_then(timeout),
        }
    }

    /// The HTTP version to the watchdog (`given` unless the hop changes it).
    pub(crate) fn version(&self, given: Version) -> Version {
        match (self.h2, given) {
            (true, _) => Version::HTTP_2,
            (false, Version::HTTP_2) => Version::HTTP_11,
            (false, v) => v,
        }
    }

    /// Whether the call is gRPC.
    pub(crate) fn grpc(&self) -> bool {
        self.grpc
    }

    /// Put back what gRPC needs of the hop-by-hop headers: `te: trailers`.
    pub(crate) fn restore(&self, h: &mut HeaderMap) {
        if self.grpc {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        }
    }

    /// How long to wait for the function's answer: `limit`, or the call's deadline if sooner.
    pub(crate) fn wait(&self, limit: Duration) -> Duration {
        self.deadline.map_or(limit, |d| d.min(limit))
    }
}

/// The request body of gRPC call `hop`: each message within `max` bytes, and pauses between
/// messages as long as the call may take (the answer's limit, or the client's deadline if
/// longer), since the client of a bidirectional stream may be quiet while it reads.
pub(crate) fn request_body(
    hop: &Hop,
    parts: &axum::http::request::Parts,
    body: Body,
    limits: &CallLimits,
    max: usize,
    overflow: &Overflow,
) -> Body {
    if let Some(pause) = parts.extensions.get::<PauseLimit>() {
        pause.raise_to(limits.answer.max(hop.deadline.unwrap_or_default()));
    }
    Body::new(MessageLimit::new(body, max, overflow))
}

/// A `grpc-timeout` value (`1*8DIGIT` then H, M, S, m, u or n).
fn timeout(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?;
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `/function/NAME[.NS]/pkg.Service/Method` for a gRPC call: the invoke path, answered in
/// gRPC's terms.
pub(crate) async fn proxy(state: &Arc<AppState>, req: Request) -> Response {
    let target = crate::invoke::target_after(&req, "/function/");
    answer(call(state, target, req).await).await
}

/// A gRPC call on any other path, routed by its `x-virga-function` metadata; everything else
/// that reaches no route gets 404.
pub(crate) async fn routed(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let named = req.headers().get(FUNCTION_HEADER).map(HeaderValue::to_str);
    let target = match named {
        Some(Ok(name)) if is_grpc(req.headers()) => {
            let uri = req.uri();
            Target::parse(&format!("{name}{}", uri.path()), uri.query()).map_err(ApiError::from)
        }
        Some(_) if is_grpc(req.headers()) => Err(ApiError::BadRequest(format!(
            "the {FUNCTION_HEADER} metadata must name a function as NAME or NAME.NAMESPACE"
        ))),
        _ if is_grpc(req.headers()) => Err(ApiError::NotFound(format!(
            "no function named for this gRPC call: call /function/NAME/{path} or send the \
             metadata {FUNCTION_HEADER}: NAME",
            path = req.uri().path().trim_start_matches('/')
        ))),
        _ => return ApiError::NotFound("no such route".into()).into_response(),
    };
    answer(call(&state, target, req).await).await
}

async fn call(state: &AppState, target: Result<Target, ApiError>, mut req: Request) -> Response {
    let target = match target {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let handle = state.function_handle(&target.key);
    if let Err(refused) = crate::invoke::admit(state, &target, handle.as_deref(), &mut req) {
        return *refused;
    }
    crate::invoke::call_with(state, &target, handle, req).await
}

/// `resp` as a gRPC answer: a gRPC one as it is, anything else (the gateway's or a watchdog's
/// own refusal) as a Trailers-Only answer whose status and message say what happened.
pub(crate) async fn answer(resp: Response) -> Response {
    if is_grpc(resp.headers()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let status = parts.status;
    let read = http_body_util::Limited::new(body, MESSAGE_BYTES).collect();
    let text = match tokio::time::timeout(Duration::from_secs(1), read).await {
        Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
        _ => String::new(),
    };
    let message = match (status.is_success(), text.is_empty()) {
        (true, _) => format!(
            "the function answered a gRPC call with HTTP {status} and no gRPC content: it \
             does not serve gRPC (an http-mode function serving gRPC over h2c does)"
        ),
        (false, true) => format!("HTTP {status}"),
        (false, false) => text,
    };
    for h in [
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::WWW_AUTHENTICATE,
    ] {
        parts.headers.remove(h);
    }
    let h = &mut parts.headers;
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(code(status)));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
        h.insert(GRPC_MESSAGE.clone(), v);
    }
    parts.status = StatusCode::OK;
    Response::from_parts(parts, Body::empty())
}

/// Whether a [`MessageLimit`] refused a message. Over HTTP/2 a failed request body only
/// resets the stream, so the call's error does not say why.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overflow(Arc<AtomicBool>);

impl Overflow {
    /// `e`, or 413 if a message was over `limit`.
    pub(crate) fn or(&self, e: ApiError, limit: usize) -> ApiError {
        if self.0.load(Ordering::Relaxed) {
            ApiError::TooLarge(limit)
        } else {
            e
        }
    }
}

/// A gRPC request body whose messages may each be at most `limit` bytes (it reads the 5-byte
/// head of each: a flag, then the length); one over fails the body with [`BodyTooLarge`].
pub(crate) struct MessageLimit {
    inner: Body,
    overflow: Overflow,
    limit: u64,
    head: [u8; 5],
    /// Bytes of the current head read so far.
    have: usize,
    /// Bytes of the current message still to come.
    left: u64,
}

impl MessageLimit {
    /// Wrap `inner`, allowing messages of up to `limit` bytes; `overflow` tells if one was over.
    pub(crate) fn new(inner: Body, limit: usize, overflow: &Overflow) -> MessageLimit {
        MessageLimit {
            inner,
            overflow: overflow.clone(),
            limit: limit as u64,
            head: [0; 5],
            have: 0,
            left: 0,
        }
    }

    /// Follow the message framing through `data`; false once a message is over the limit.
    fn scan(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            if self.left > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(5 - self.have);
            self.head[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let [_, a, b, c, d] = self.head;
                self.left = u64::from(u32::from_be_bytes([a, b, c, d]));
                if self.left > self.limit {
                    return false;
                }
            }
        }
        true
    }
}

impl http_body::Body for MessageLimit {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => f,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            if !self.scan(data) {
                self.overflow.0.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(axum::Error::new(BodyTooLarge))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The gRPC status code for an HTTP refusal.
fn code(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 3,              // INVALID_ARGUMENT
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED: no such function here
        408 | 504 => 4,        // DEADLINE_EXCEEDED
        413 => 8,              // RESOURCE_EXHAUSTED
        429 | 502 | 503 => 14, // UNAVAILABLE: worth a retry
        500 => 13,             // INTERNAL
        _ => 2,                // UNKNOWN
    }
}

/// `grpc-message`'s encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let t = |s: &str| timeout(&HeaderValue::from_str(s).unwrap());
        assert_eq!(t("5S"), Some(Duration::from_secs(5)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(t("100n"), Some(Duration::from_nanos(100)));
        assert_eq!(t("S"), None);
        assert_eq!(t("123456789S"), None, "at most 8 digits");
        assert_eq!(t("5x"), None);
    }

    #[test]
    fn each_message_is_held_to_the_limit_across_chunks() {
        let mut m = MessageLimit::new(Body::empty(), 10, &Overflow::default());
        // Two 10-byte messages, the second head split across chunks: 30 bytes in all.
        let mut wire = vec![0, 0, 0, 0, 10];
        wire.extend_from_slice(&[7; 10]);
        wire.extend_from_slice(&[0, 0, 0, 0, 10]);
        wire.extend_from_slice(&[7; 10]);
        assert!(m.scan(&wire[..7]));
        assert!(m.scan(&wire[7..17]));
        assert!(m.scan(&wire[17..]));
        assert_eq!((m.have, m.left), (0, 0));
        assert!(m.scan(&[0, 0, 0, 0]));
        assert!(!m.scan(&[11]), "an 11-byte message is over");
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("50% off: é\n"), "50%25 off: %C3%A9%0A");
    }

    #[test]
    fn a_hop_is_h2_for_grpc_and_http2() {
        let mut h = HeaderMap::new();
        assert!(!Hop::of(Version::HTTP_11, &h).h2);
        assert!(Hop::of(Version::HTTP_2, &h).h2);
        assert_eq!(
            Hop::of(Version::HTTP_11, &h).version(Version::HTTP_10),
            Version::HTTP_10
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        h.insert(&GRPC_TIMEOUT, HeaderValue::from_static("2S"));
        let hop = Hop::of(Version::HTTP_11, &h);
        assert!(hop.h2);
        assert_eq!(hop.wait(Duration::from_secs(60)), Duration::from_secs(2));
        assert_eq!(hop.wait(Duration::from_secs(1)), Duration::from_secs(1));
    }
}
