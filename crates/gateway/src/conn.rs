//! One client connection's clock: which phase it is in (sending a request head, being served,
//! idle between requests) and since when, so that a client that sends its head too slowly or
//! sits idle too long is cut off. The socket wrapper [`GuardedIo`] enforces the head and idle
//! limits where the connection waits anyway (a read that found no data), with one timer per
//! connection that is re-armed only when a limit draws nearer; [`TimedBody`] cuts off a request
//! body that stops arriving. The per-request cost is two clock reads and a few atomic stores.
//! An HTTP/2 connection serves requests side by side: it is busy while any is, and idle from
//! the end of its last one (its pings and window updates never count as a new request).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// Waiting for (the rest of) a request head.
const HEAD: u8 = 0;
/// A request is being served.
const BUSY: u8 = 1;
/// Between requests on a kept-alive connection.
const IDLE: u8 = 2;
/// Cut off to make room for another connection (terminal).
const EVICTED: u8 = 3;
/// The connection has ended (terminal).
const CLOSED: u8 = 4;
/// Switched protocols (a WebSocket): its own limits apply, not these (terminal).
const UPGRADED: u8 = 5;

/// The instant phase times are counted from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_nanos() -> u64 {
    Instant::now().saturating_duration_since(*EPOCH).as_nanos() as u64
}

/// The phase of one connection, shared by its socket, its requests and the connection limiter.
pub(crate) struct Clock {
    phase: AtomicU8,
    /// When the phase began, in nanoseconds since [`EPOCH`].
    since: AtomicU64,
    /// Requests begun (a connection with none can be evicted).
    seq: AtomicU32,
    /// Requests begun and not yet answered in full.
    active: AtomicU32,
    /// HTTP/2: requests overlap, and bytes between them are frames of the connection.
    multiplexed: AtomicBool,
    /// The connection's task, woken when it is evicted.
    waker: AtomicWaker,
    /// Told when the socket is dropped (an upgraded one outlives hyper's connection) and
    /// when the last [`Kept`] goes.
    released: Notify,
    /// The socket was dropped.
    dropped: AtomicBool,
    /// [`Kept`] guards alive: the connection lives on elsewhere (handed to a watchdog).
    kept: AtomicU32,
}

impl Clock {
    /// A new connection: its first request head is due from now.
    pub(crate) fn new() -> Arc<Clock> {
        Arc::new(Clock {
            phase: AtomicU8::new(HEAD),
            since: AtomicU64::new(now_nanos()),
            seq: AtomicU32::new(0),
            active: AtomicU32::new(0),
            multiplexed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            released: Notify::new(),
            dropped: AtomicBool::new(false),
            kept: AtomicU32::new(0),
        })
    }

    /// The connection switched protocols: no head or idle limit from now on.
    pub(crate) fn upgraded(&self) {
        self.phase.store(UPGRADED, Ordering::Release);
    }

    /// Completes once the socket is dropped and nothing keeps the connection, if it switched
    /// protocols (its socket lives on after hyper is done with it); at once otherwise.
    pub(crate) async fn upgrade_ended(&self) {
        if self.phase.load(Ordering::Acquire) != UPGRADED {
            return;
        }
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.dropped.load(Ordering::SeqCst) && self.kept.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Keep the connection's slot after its socket here is dropped (it was handed over),
    /// until the guard drops.
    pub(crate) fn keep(self: &Arc<Self>) -> Kept {
        self.kept.fetch_add(1, Ordering::SeqCst);
        Kept(self.clone())
    }

    /// A request head arrived: the connection is busy until the returned guard drops, or
    /// `None` when the connection was evicted first.
    pub(crate) fn begin(self: &Arc<Self>) -> Option<Busy> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let busy = Busy(self.clone());
        self.phase
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                (p != EVICTED && p != CLOSED).then_some(BUSY)
            })
            .ok()?;
        self.seq.fetch_add(1, Ordering::Relaxed);
        Some(busy)
    }

    /// The connection speaks HTTP/2.
    pub(crate) fn set_multiplexed(&self) {
        self.multiplexed.store(true, Ordering::Relaxed);
    }

    /// A request is answered: with none left, the connection idles until its next request.
    fn end(&self) {
        if self.active.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        self.since.store(now_nanos(), Ordering::Relaxed);
        if self
            .phase
            .compare_exchange(BUSY, IDLE, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            && self.active.load(Ordering::SeqCst) > 0
        {
            // A request began meanwhile (HTTP/2): it is busy after all.
            let _ = self
                .phase
                .compare_exchange(IDLE, BUSY, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// Bytes arrived: an idle HTTP/1 connection starts sending its next request head.
    fn bytes_arrived(&self) {
        if self.phase.load(Ordering::Relaxed) == IDLE && !self.multiplexed.load(Ordering::Relaxed) {
            self.since.store(now_nanos(), Ordering::Relaxed);
            self.phase.store(HEAD, Ordering::Release);
        }
    }

    /// True while no request head has arrived since the connection opened.
    pub(crate) fn awaiting_first_request(&self) -> bool {
        self.phase.load(Ordering::Acquire) == HEAD && self.seq.load(Ordering::Acquire) == 0
    }

    /// Cut the connection off if it has not sent a complete request head yet; true if it was.
    pub(crate) fn evict(&self) -> bool {
        if self.seq.load(Ordering::Acquire) != 0 {
            return false;
        }
        let evicted = self
            .phase
            .compare_exchange(HEAD, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if evicted {
            self.waker.wake();
        }
        evicted
    }

    /// The connection ended; false if it had been evicted (its slot went to another).
    pub(crate) fn close(&self) -> bool {
        self.phase.swap(CLOSED, Ordering::AcqRel) != EVICTED
    }
}

/// Holds a connection's slot while the connection lives on without its socket here.
pub(crate) struct Kept(Arc<Clock>);

impl Drop for Kept {
    fn drop(&mut self) {
        self.0.kept.fetch_sub(1, Ordering::SeqCst);
        self.0.released.notify_waiters();
    }
}

/// One request in progress on a connection; it ends when this drops.
pub(crate) struct Busy(Arc<Clock>);

impl Busy {
    /// Its connection switched protocols (the answer to this request was a `101`).
    pub(crate) fn upgraded(&self) {
        self.0.upgraded();
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The limits a connection's clock is held to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Longest time to send a request head, from the connection's start or its first byte.
    pub(crate) head: Duration,
    /// Longest wait between requests on a kept-alive connection.
    pub(crate) idle: Duration,
}

/// A client socket that fails its reads once the connection overstays its phase's limit.
pub(crate) struct GuardedIo<T> {
    io: T,
    clock: Arc<Clock>,
    limits: Limits,
    /// Whether the connection can be evicted (a reserve one), so its waker must be known.
    evictable: bool,
    /// One timer per connection, armed at `armed`; it only moves when a limit draws nearer
    /// (a fire before the real deadline re-arms it), so steady traffic does not touch it.
    sleep: Pin<Box<Sleep>>,
    armed: Instant,
}

impl<T> GuardedIo<T> {
    /// Wrap `io`, whose first request head is due within `limits.head`.
    pub(crate) fn new(io: T, clock: Arc<Clock>, limits: Limits, evictable: bool) -> GuardedIo<T> {
        let armed = Instant::now() + limits.head;
        GuardedIo {
            io,
            clock,
            limits,
            evictable,
            sleep: Box::pin(tokio::time::sleep_until(armed)),
            armed,
        }
    }

    /// A read found no data: fail if the phase's limit has passed, else wait for it too.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.evictable {
            self.clock.waker.register(cx.waker());
        }
        let phase = self.clock.phase.load(Ordering::Acquire);
        let limit = match phase {
            HEAD => self.limits.head,
            IDLE => self.limits.idle,
            UPGRADED => return Poll::Pending,
            BUSY => {
                // No limit while serving, but keep the timer registered: hyper may not read
                // again when the answer is done, so this is what looks at the idle connection.
                while self.sleep.as_mut().poll(cx).is_ready() {
                    let next = Instant::now() + self.limits.head.min(self.limits.idle);
                    self.sleep.as_mut().reset(next);
                    self.armed = next;
                }
                return Poll::Pending;
            }
            _ => return Poll::Ready(Err(io::Error::other("connection evicted"))),
        };
        let since = Duration::from_nanos(self.clock.since.load(Ordering::Relaxed));
        let deadline = *EPOCH + since + limit;
        if deadline < self.armed {
            self.sleep.as_mut().reset(deadline);
            self.armed = deadline;
        }
        while self.sleep.as_mut().poll(cx).is_ready() {
            if deadline <= self.armed {
                let what = if phase == HEAD {
                    "request head"
                } else {
                    "idle"
                };
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what} timeout ({limit:?})"),
                )));
            }
            self.sleep.as_mut().reset(deadline);
            self.armed = deadline;
        }
        Poll::Pending
    }
}

impl<T> Drop for GuardedIo<T> {
    fn drop(&mut self) {
        self.clock.dropped.store(true, Ordering::SeqCst);
        self.clock.released.notify_waiters();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clock.bytes_arrived();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// An answer's body that ends its request once hyper is done with it.
pub(crate) struct Tracked<B> {
    inner: B,
    _busy: Option<Busy>,
}

impl<B> Tracked<B> {
    /// Track `inner`, the answer to the request `busy` stands for.
    pub(crate) fn new(inner: B, busy: Option<Busy>) -> Tracked<B> {
        Tracked { inner, _busy: busy }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body stopped arriving for longer than `--body-read-timeout`.
#[derive(Debug)]
pub(crate) struct BodyTimeout(pub(crate) Duration);

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body stopped arriving: no data for {} s (send it faster, or raise \
             --body-read-timeout)",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimeout {}

/// The longest pause in one request body: `--body-read-timeout`, which the invoke path raises
/// for a function that takes streamed bodies (shared with the request as an extension).
#[derive(Clone)]
pub(crate) struct PauseLimit(Arc<AtomicU64>);

impl PauseLimit {
    /// A limit of `d`.
    pub(crate) fn new(d: Duration) -> PauseLimit {
        PauseLimit(Arc::new(AtomicU64::new(d.as_nanos() as u64)))
    }

    /// Allow pauses of up to `d`, if that is longer.
    pub(crate) fn raise_to(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.0.fetch_max(nanos, Ordering::Relaxed);
    }

    fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// A request body that fails with [`BodyTimeout`] when no data arrives within its limit.
/// The timer is made only if the body ever has to be waited for.
pub(crate) struct TimedBody<B> {
    inner: B,
    limit: PauseLimit,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Data arrived since the timer was last set.
    progressed: bool,
}

impl<B> TimedBody<B> {
    /// `inner`, cut off after `limit` without data.
    pub(crate) fn new(inner: B, limit: PauseLimit) -> TimedBody<B> {
        TimedBody {
            inner,
            limit,
            sleep: None,
            progressed: false,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.progressed = true;
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = this.limit.get();
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if std::mem::take(&mut this.progressed) {
                    sleep.as_mut().reset(Instant::now() + limit);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(limit))))),
                    Poll::Pending => Poll::Pending,
                }
            }
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

    #[test]
    fn eviction_takes_only_connections_without_a_request() {
        let c = Clock::new();
        assert!(c.awaiting_first_request());
        let busy = c.begin().unwrap();
        assert!(!c.evict(), "a served connection is not evicted");
        drop(busy);
        assert!(!c.awaiting_first_request());
        assert!(c.close());

        let c = Clock::new();
        assert!(c.evict());
        assert!(c.begin().is_none(), "an evicted connection serves nothing");
        assert!(!c.close(), "an evicted connection's slot was handed on");
        let c = Clock::new();
        assert!(c.close());
        assert!(!c.evict(), "a closed connection cannot be evicted");
    }

    #[test]
    fn a_connection_idles_only_once_every_request_ended() {
        let c = Clock::new();
        let first = c.begin().unwrap();
        let second = c.begin().unwrap();
        drop(first);
        assert_eq!(c.phase.load(Ordering::Relaxed), BUSY);
        drop(second);
        assert_eq!(c.phase.load(Ordering::Relaxed), IDLE);
        c.bytes_arrived();
        assert_eq!(
            c.phase.load(Ordering::Relaxed),
            HEAD,
            "HTTP/1: a new request head"
        );
        let c = Clock::new();
        c.set_multiplexed();
        drop(c.begin().unwrap());
        c.bytes_arrived();
        assert_eq!(
            c.phase.load(Ordering::Relaxed),
            IDLE,
            "HTTP/2: a ping is no request"
        );
    }
}
