//! A request body that can be taken back if the upstream never read it, so a call whose
//! instance refused the connection (it died after being picked) is retried on another
//! instance with the same body. The body moves into the upstream request on its first read;
//! until then it stays in a shared slot the retry takes it from.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use http_body::{Frame, SizeHint};

/// The body of one call, shared between attempts.
pub(crate) struct Replayable {
    slot: Arc<Mutex<Option<Body>>>,
    hint: SizeHint,
    end: bool,
}

impl Replayable {
    /// Hold `body` for the attempts of one call.
    pub(crate) fn new(body: Body) -> Replayable {
        Replayable {
            hint: body.size_hint(),
            end: body.is_end_stream(),
            slot: Arc::new(Mutex::new(Some(body))),
        }
    }

    /// True while no attempt has read the body and it is not empty (so no request could
    /// have reached a function complete).
    pub(crate) fn unread(&self) -> bool {
        !self.end
            && self
                .slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
    }

    /// The body for the next attempt, or `None` once an attempt has started reading it.
    pub(crate) fn attempt(&self) -> Option<Body> {
        let present = self
            .slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        present.then(|| {
            Body::new(Attempt {
                slot: self.slot.clone(),
                body: None,
                hint: self.hint,
                end: self.end,
            })
        })
    }
}

/// One attempt's view of the shared body: takes it on the first read.
struct Attempt {
    slot: Arc<Mutex<Option<Body>>>,
    body: Option<Body>,
    hint: SizeHint,
    end: bool,
}

impl HttpBody for Attempt {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.body.is_none() {
            let taken = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
            match taken {
                Some(b) => self.body = Some(b),
                None => return Poll::Ready(None),
            }
        }
        match self.body.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().map_or(self.end, |b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| self.hint, |b| b.size_hint())
    }
}

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
    async fn an_unread_body_is_available_again() {
        let r = Replayable::new(Body::from("hello"));
        let first = r.attempt().unwrap();
        assert_eq!(first.size_hint().exact(), Some(5));
        drop(first);
        let second = r.attempt().unwrap();
        let bytes = second.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert!(r.attempt().is_none());
    }

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
