//! A streamed request body with a limit that drains before it refuses (see [`DrainingLimit`]).
//! (The body a retry can send again is `virga_http::Replayable`.)

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};

/// A streamed request body went over the gateway's limit.
#[derive(Debug, thiserror::Error)]
#[error("request body over the limit")]
pub(crate) struct BodyTooLarge;

/// A streamed body over `limit` bytes fails with [`BodyTooLarge`], but
/// only after reading on (and dropping) up to three more limits' worth: a server that answers
/// 413 while the client is still sending closes the connection with unread data, the kernel
/// resets it, and the client may lose the 413. Bodies far over the limit still cut short.
pub(crate) struct DrainingLimit {
    inner: Body,
    seen: usize,
    limit: usize,
}

impl DrainingLimit {
    /// Wrap `inner`, allowing `limit` bytes.
    pub(crate) fn new(inner: Body, limit: usize) -> DrainingLimit {
        DrainingLimit {
            inner,
            seen: 0,
            limit,
        }
    }
}

impl HttpBody for DrainingLimit {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        loop {
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => f,
                Poll::Ready(None) if self.seen > self.limit => {
                    return Poll::Ready(Some(Err(axum::Error::new(BodyTooLarge))))
                }
                other => return other,
            };
            let len = frame.data_ref().map_or(0, |d| d.len());
            self.seen = self.seen.saturating_add(len);
            if self.seen <= self.limit {
                return Poll::Ready(Some(Ok(frame)));
            }
            if self.seen > self.limit.saturating_mul(4) {
                return Poll::Ready(Some(Err(axum::Error::new(BodyTooLarge))));
            }
            // Over the limit: keep reading, pass nothing on.
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn an_oversized_stream_is_read_to_its_end_then_refused() {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            (0..4).map(|_| Ok(Bytes::from(vec![b'y'; 600]))).collect();
        let inner = Body::from_stream(futures_util::stream::iter(chunks));
        let err = DrainingLimit::new(inner, 1024).collect().await.unwrap_err();
        assert!(std::error::Error::source(&err).is_some_and(|s| s.is::<BodyTooLarge>()));
        let small = DrainingLimit::new(Body::from("hello"), 1024);
        assert_eq!(&small.collect().await.unwrap().to_bytes()[..], b"hello");
    }
}
