//! A request body that can be taken back while nothing has read it: when the upstream refuses
//! the connection (its process died a moment ago and is being restarted), the request never
//! reached the function, so it is sent again, with the same body, once the function serves.
//! The body moves into the request on its first read; until then it stays in a shared slot.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

/// The body of one request, shared between attempts.
pub struct Replayable<B> {
    slot: Arc<Mutex<Option<B>>>,
    hint: SizeHint,
    end: bool,
}

impl<B: Body + Unpin> Replayable<B> {
    /// Hold `body` for the attempts of one request.
    pub fn new(body: B) -> Replayable<B> {
        Replayable {
            hint: body.size_hint(),
            end: body.is_end_stream(),
            slot: Arc::new(Mutex::new(Some(body))),
        }
    }

    /// Whether the body is empty (an empty body is never read, so it is always unread).
    pub fn is_empty(&self) -> bool {
        self.end
    }

    /// True while no attempt has started reading the body.
    pub fn unread(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// The body for the next attempt, or `None` once an attempt has started reading it.
    pub fn attempt(&self) -> Option<Attempt<B>> {
        let present = self
            .slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        present.then(|| Attempt {
            slot: self.slot.clone(),
            body: None,
            hint: self.hint,
            end: self.end,
        })
    }
}

/// One attempt's view of the shared body: takes it on the first read.
pub struct Attempt<B> {
    slot: Arc<Mutex<Option<B>>>,
    body: Option<B>,
    hint: SizeHint,
    end: bool,
}

impl<B: Body + Unpin> Body for Attempt<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
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
        match &self.body {
            Some(b) => b.is_end_stream(),
            None => self.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn an_unread_body_is_available_again() {
        let r = Replayable::new(Full::new(bytes::Bytes::from_static(b"hello")));
        assert!(!r.is_empty());
        let first = r.attempt().unwrap();
        assert_eq!(first.size_hint().exact(), Some(5));
        drop(first);
        assert!(r.unread());
        let second = r.attempt().unwrap();
        let bytes = second.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert!(!r.unread());
        assert!(r.attempt().is_none());
    }
}
