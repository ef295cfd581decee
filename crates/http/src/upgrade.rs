//! HTTP/1.1 `Upgrade` through a proxy (WebSockets first): which requests ask for one, the
//! headers that carry it across a hop, and [`splice`], which copies bytes both ways between
//! the two upgraded connections, without looking at frames, until either side closes, the
//! connection idles or outlives its limits, or the caller stops it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::HOP_BY_HOP;

/// Bytes buffered per direction: the copy's only buffering (a full one waits for the reader);
/// small, since every open connection holds two in each proxy.
const COPY_BUFFER: usize = 8 * 1024;
/// How long a closing splice waits for each side to take its FIN.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// Whether a request asks to switch protocols: HTTP/1.1 with an `Upgrade` header and
/// `upgrade` among its `Connection` tokens.
pub fn requested(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11 && headers.contains_key(header::UPGRADE) && says_upgrade(headers)
}

/// Whether an answer switches protocols: `101` with an `Upgrade` header.
pub fn switched(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS && headers.contains_key(header::UPGRADE)
}

fn says_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Remove the hop-by-hop headers of an upgrade request or answer (those `Connection`
/// names too) but carry the upgrade itself to the next hop: `Upgrade` as it was,
/// `Connection: upgrade`. (`Sec-WebSocket-*` are end to end and stay.)
pub fn keep_upgrade(headers: &mut HeaderMap) {
    let upgrade: Vec<HeaderValue> = headers.get_all(header::UPGRADE).iter().cloned().collect();
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&HOP_BY_HOP) {
        headers.remove(name);
    }
    for v in upgrade {
        headers.append(header::UPGRADE, v);
    }
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// When a splice gives up on a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// No byte either way for this long closes it.
    pub idle: Option<Duration>,
    /// It is closed this long after it began.
    pub lifetime: Option<Duration>,
}

/// Why a splice ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed (bytes copied client to upstream, upstream to client).
    Closed(u64, u64),
    /// A side failed (reset, broken pipe).
    Failed(io::Error),
    /// Nothing moved for the idle limit.
    Idle,
    /// It reached its lifetime.
    Lifetime,
    /// The caller's stop signal fired.
    Stopped,
}

impl End {
    /// Its name, as the metrics' `reason` label says it and a hand-off's lifeline carries it.
    pub fn reason(&self) -> &'static str {
        match self {
            End::Closed(..) => "closed",
            End::Failed(_) => "failed",
            End::Idle => "idle",
            End::Lifetime => "lifetime",
            End::Stopped => "drained",
        }
    }

    /// The reason named `name` (see [`End::reason`]), if it is one.
    pub fn reason_named(name: &str) -> Option<&'static str> {
        ["closed", "failed", "idle", "lifetime", "drained"]
            .into_iter()
            .find(|r| *r == name)
    }
}

/// Copy bytes between `client` and `upstream` both ways (a side's EOF becomes a FIN on the
/// other) until both are done, a limit is reached or `stop` completes; then both are shut
/// down (FIN) and dropped. Back-pressure holds: a side that does not read stops the copy
/// towards it once one buffer is full.
pub async fn splice<C, U, S>(client: C, upstream: U, limits: Limits, stop: S) -> End
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    S: Future<Output = ()>,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let mut client = Active::new(client, start, &last);
    let mut upstream = Active::new(upstream, start, &last);
    let end = {
        let copy = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            COPY_BUFFER,
            COPY_BUFFER,
        );
        tokio::select! {
            r = copy => match r {
                Ok((up, down)) => End::Closed(up, down),
                Err(e) => End::Failed(e),
            },
            () = idle(start, &last, limits.idle) => End::Idle,
            () = after(start, limits.lifetime) => End::Lifetime,
            () = stop => End::Stopped,
        }
    };
    if !matches!(end, End::Closed(..)) {
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, client.io.shutdown()).await;
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, upstream.io.shutdown()).await;
    }
    end
}

/// Completes once nothing was read either way for `limit` (never without one).
async fn idle(start: Instant, last: &AtomicU64, limit: Option<Duration>) {
    let Some(limit) = limit else {
        return std::future::pending().await;
    };
    loop {
        let since = Duration::from_nanos(last.load(Ordering::Relaxed));
        let Some(deadline) = start.checked_add(since + limit) else {
            return std::future::pending().await;
        };
        if deadline <= Instant::now() {
            return;
        }
        // Steady traffic moves `last` on; the timer is re-armed only when it fires.
        tokio::time::sleep_until(deadline).await;
    }
}

/// Completes `limit` after `start` (never without one).
async fn after(start: Instant, limit: Option<Duration>) {
    match limit.and_then(|l| start.checked_add(l)) {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A side of a splice that notes when it last read something.
struct Active<'a, T> {
    io: T,
    start: Instant,
    last: &'a AtomicU64,
}

impl<'a, T> Active<'a, T> {
    fn new(io: T, start: Instant, last: &'a AtomicU64) -> Active<'a, T> {
        Active { io, start, last }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let nanos = Instant::now().duration_since(this.start).as_nanos();
            this.last
                .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt};

    #[test]
    fn upgrade_requests_and_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!requested(Version::HTTP_11, &h), "no Connection: upgrade");
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade, x-hop"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("sec-websocket-key", HeaderValue::from_static("k"));
        assert!(requested(Version::HTTP_11, &h));
        assert!(!requested(Version::HTTP_10, &h));
        keep_upgrade(&mut h);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
        assert!(!h.contains_key(header::TE));
        assert!(!h.contains_key("x-hop"), "named in Connection");
        assert!(switched(StatusCode::SWITCHING_PROTOCOLS, &h));
        assert!(!switched(StatusCode::OK, &h));
    }

    #[tokio::test]
    async fn bytes_go_both_ways_and_eof_ends_it() {
        let (client, mut client_peer) = duplex(64);
        let (upstream, mut upstream_peer) = duplex(64);
        let task = tokio::spawn(splice(
            client,
            upstream,
            Limits::default(),
            std::future::pending(),
        ));
        client_peer.write_all(b"ping").await.unwrap();
        let mut buf = [0; 4];
        upstream_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        upstream_peer.write_all(b"pong").await.unwrap();
        client_peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        drop(upstream_peer);
        // The upstream's EOF reaches the client as one.
        assert_eq!(client_peer.read(&mut buf).await.unwrap(), 0);
        drop(client_peer);
        assert!(matches!(task.await.unwrap(), End::Closed(4, 4)));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_lifetime_limits_close_it() {
        let (client, mut client_peer) = duplex(64);
        let (upstream, _upstream_peer) = duplex(64);
        let limits = Limits {
            idle: Some(Duration::from_secs(10)),
            lifetime: None,
        };
        let task = tokio::spawn(splice(client, upstream, limits, std::future::pending()));
        // Traffic every 6 s keeps it open past the idle limit.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            client_peer.write_all(b"x").await.unwrap();
        }
        assert!(!task.is_finished());
        let started = Instant::now();
        assert!(matches!(task.await.unwrap(), End::Idle));
        assert!(started.elapsed() >= Duration::from_secs(9));

        let (client, _c) = duplex(64);
        let (upstream, _u) = duplex(64);
        let limits = Limits {
            idle: None,
            lifetime: Some(Duration::from_secs(5)),
        };
        let started = Instant::now();
        let end = splice(client, upstream, limits, std::future::pending()).await;
        assert!(matches!(end, End::Lifetime));
        assert_eq!(started.elapsed().as_secs(), 5);
    }
}
