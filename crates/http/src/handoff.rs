//! Handing an upgraded client connection from the gateway to the instance's watchdog, so that
//! a WebSocket's frames cross one proxy (the watchdog's splice), not two.
//!
//! The gateway asks for it with [`HEADER`] (a random id) on the handshake it sends; a
//! watchdog that listens for hand-offs ([`Handoffs`]) strips it before the function sees it,
//! and when the function answers `101` it waits for that id and answers [`ACCEPTED`] in the
//! same header. The gateway writes the `101` to the client, then [`give`]s the client's socket
//! (SCM_RIGHTS over the watchdog's Unix socket, with the bytes the client already sent and
//! the connection's limits) and lets go of it. The handshake's own connection stays open as
//! the *lifeline*: the watchdog writes why the connection ended on it and closes it; the
//! gateway closing it (a drain) ends the connection.
//!
//! Every failure degrades to the two-splice path: a watchdog that refuses the id (unknown, or
//! too late) makes [`give`] say so and the gateway splices the lifeline as any upgraded
//! connection; a watchdog whose hand-off does not come, or that sees bytes on the lifeline
//! first, splices the lifeline.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::oneshot;

use crate::upgrade::Limits;

/// The header of a handshake that may be handed off (its id) and of the answer that takes it.
pub const HEADER: &str = "x-virga-handoff";
/// [`HEADER`]'s value on a `101` whose watchdog waits for the client's socket.
pub const ACCEPTED: &str = "accepted";
/// Bytes of what the client sent ahead that a hand-off carries at most (hyper buffers less).
pub const MAX_PENDING: usize = 1 << 20;
/// The longest offer line.
const MAX_LINE: usize = 256;
/// How long a refused or accepted offer's answer may take.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// A client connection handed to the watchdog.
pub struct Handed {
    /// The client's socket.
    pub client: TcpStream,
    /// What the client sent after its handshake that the gateway had already read.
    pub pending: Vec<u8>,
    /// The function's idle and lifetime limits.
    pub limits: Limits,
}

/// What [`give`] made of an offer.
#[derive(Debug, PartialEq, Eq)]
pub enum Given {
    /// The watchdog has the socket: close this side's descriptor without a shutdown.
    Taken,
    /// The watchdog did not expect the id: splice the lifeline instead.
    Refused,
}

/// Give `client` (a connected TCP socket) with `pending` and `limits` to the watchdog
/// listening on `socket`, for the handshake that carried `id`.
pub async fn give(
    socket: &Path,
    id: &str,
    client: BorrowedFd<'_>,
    pending: &[u8],
    limits: Limits,
) -> io::Result<Given> {
    let mut stream = UnixStream::connect(socket).await?;
    let line = format!(
        "{id} {} {} {}\n",
        millis(limits.idle),
        millis(limits.lifetime),
        pending.len()
    );
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut ancillary = SendAncillaryBuffer::new(&mut space);
    let fds = [client];
    if !ancillary.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the descriptor"));
    }
    let bytes = line.as_bytes();
    let sent = loop {
        stream.writable().await?;
        let r = stream.try_io(Interest::WRITABLE, || {
            rustix::net::sendmsg(
                &stream,
                &[IoSlice::new(bytes)],
                &mut ancillary,
                SendFlags::empty(),
            )
            .map_err(io::Error::from)
        });
        match r {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    stream.write_all(&bytes[sent..]).await?;
    stream.write_all(pending).await?;
    let mut answer = [0u8; 1];
    tokio::time::timeout(ANSWER_WAIT, stream.read_exact(&mut answer))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer to the hand-off"))??;
    Ok(if answer[0] == b'1' {
        Given::Taken
    } else {
        Given::Refused
    })
}

fn millis(d: Option<Duration>) -> u128 {
    d.map_or(0, |d| d.as_millis().max(1))
}

fn from_millis(s: &str) -> Option<Option<Duration>> {
    let ms: u64 = s.parse().ok()?;
    Some((ms > 0).then(|| Duration::from_millis(ms)))
}

/// The watchdog's side: a Unix socket taking the client connections of expected ids.
pub struct Handoffs {
    path: PathBuf,
    waiting: Mutex<HashMap<String, oneshot::Sender<Handed>>>,
}

impl Handoffs {
    /// Listen on `path` (a stale socket there is replaced), owner-only.
    pub fn bind(path: &Path) -> io::Result<Arc<Handoffs>> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let handoffs = Arc::new(Handoffs {
            path: path.to_path_buf(),
            waiting: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&handoffs);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Some(handoffs) = weak.upgrade() else {
                    break;
                };
                tokio::spawn(async move {
                    if let Err(e) = handoffs.take(stream).await {
                        tracing::debug!("a hand-off failed: {e}");
                    }
                });
            }
        });
        Ok(handoffs)
    }

    /// Wait for the connection of the handshake that carried `id` (refused once this drops).
    pub fn expect(self: &Arc<Self>, id: &str) -> Expected {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id.to_string(), tx);
        Expected {
            handoffs: self.clone(),
            id: id.to_string(),
            rx,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<Handed>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Read one offer from `stream` and answer it: `1` taken, `0` refused.
    async fn take(&self, mut stream: UnixStream) -> io::Result<()> {
        let (line, fd, mut pending) = tokio::time::timeout(ANSWER_WAIT, receive_line(&stream))
            .await
            .map_err(|_| invalid("no offer line in time"))??;
        let (id, limits, len) = parse(&line).ok_or_else(|| invalid("a malformed offer"))?;
        if len > MAX_PENDING || pending.len() > len {
            return Err(invalid("more pending bytes than announced or allowed"));
        }
        let have = pending.len();
        pending.resize(len, 0);
        tokio::time::timeout(ANSWER_WAIT, stream.read_exact(&mut pending[have..]))
            .await
            .map_err(|_| invalid("the pending bytes did not come in time"))??;
        let waiter = self.lock().remove(&id);
        let (Some(waiter), Some(fd)) = (waiter, fd) else {
            return stream.write_all(b"0").await;
        };
        let client = std::net::TcpStream::from(fd);
        client.set_nonblocking(true)?;
        let handed = Handed {
            client: TcpStream::from_std(client)?,
            pending,
            limits,
        };
        // The waiter may have given up meanwhile: then it is refused after all.
        let answer = if waiter.send(handed).is_ok() {
            b"1"
        } else {
            b"0"
        };
        stream.write_all(answer).await
    }
}

impl Drop for Handoffs {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A hand-off the watchdog waits for.
pub struct Expected {
    handoffs: Arc<Handoffs>,
    id: String,
    rx: oneshot::Receiver<Handed>,
}

impl Expected {
    /// The handed connection, or `None` if none came within `wait` (it is refused from then).
    pub async fn wait(&mut self, wait: Duration) -> Option<Handed> {
        tokio::time::timeout(wait, &mut self.rx).await.ok()?.ok()
    }
}

impl Drop for Expected {
    fn drop(&mut self) {
        self.handoffs.lock().remove(&self.id);
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Receive the offer line and the descriptor sent with it; also what came after the line.
async fn receive_line(stream: &UnixStream) -> io::Result<(String, Option<OwnedFd>, Vec<u8>)> {
    let mut got = Vec::new();
    let mut fd = None;
    loop {
        let mut buf = [0u8; MAX_LINE];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut ancillary = RecvAncillaryBuffer::new(&mut space);
        stream.readable().await?;
        let r = stream.try_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut buf)];
            rustix::net::recvmsg(stream, &mut iov, &mut ancillary, RecvFlags::CMSG_CLOEXEC)
                .map_err(io::Error::from)
        });
        let n = match r {
            Ok(m) => m.bytes,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        for msg in ancillary.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                // Only the first descriptor is the client's; any other is closed here.
                for f in fds {
                    fd.get_or_insert(f);
                }
            }
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the offer was cut",
            ));
        }
        got.extend_from_slice(&buf[..n]);
        if let Some(end) = got.iter().position(|&b| b == b'\n') {
            let rest = got.split_off(end + 1);
            got.pop();
            let line = String::from_utf8(got).map_err(|_| invalid("a non-UTF-8 offer"))?;
            return Ok((line, fd, rest));
        }
        if got.len() > MAX_LINE {
            return Err(invalid("an offer line too long"));
        }
    }
}

/// `ID IDLE_MS LIFETIME_MS PENDING_LEN` (0 ms: no limit).
fn parse(line: &str) -> Option<(String, Limits, usize)> {
    let mut parts = line.split(' ');
    let id = parts.next().filter(|id| !id.is_empty())?;
    let idle = from_millis(parts.next()?)?;
    let lifetime = from_millis(parts.next()?)?;
    let len = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then(|| (id.to_string(), Limits { idle, lifetime }, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use tokio::net::TcpListener;

    /// A connected pair: (the side to hand off, its peer).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (peer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (accepted.unwrap().0, peer.unwrap())
    }

    #[tokio::test]
    async fn an_expected_connection_is_handed_over_with_its_bytes_and_limits() {
        let dir = std::env::temp_dir().join(format!("virga-handoff-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.sock");
        let handoffs = Handoffs::bind(&path).unwrap();
        let (side, mut peer) = pair().await;
        let limits = Limits {
            idle: Some(Duration::from_secs(7)),
            lifetime: None,
        };

        // An id nobody expects is refused, and the socket stays usable here.
        let given = give(&path, "nobody", side.as_fd(), b"", limits)
            .await
            .unwrap();
        assert_eq!(given, Given::Refused);

        let mut expected = handoffs.expect("abc");
        let given = give(&path, "abc", side.as_fd(), b"early", limits)
            .await
            .unwrap();
        assert_eq!(given, Given::Taken);
        drop(side);
        let mut handed = expected.wait(Duration::from_secs(5)).await.unwrap();
        assert_eq!(handed.pending, b"early");
        assert_eq!(handed.limits, limits);
        // The handed socket is the same connection: both ways.
        peer.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        handed.client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        handed.client.write_all(b"pong").await.unwrap();
        peer.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        drop(handed);
        assert_eq!(
            peer.read(&mut buf).await.unwrap(),
            0,
            "closing it is the FIN"
        );

        // Once the waiter gave up, the same id is refused.
        drop(expected);
        let (side, _peer) = pair().await;
        let given = give(&path, "abc", side.as_fd(), b"", limits).await.unwrap();
        assert_eq!(given, Given::Refused);
        drop(handoffs);
        assert!(!path.exists(), "the socket is removed with its listener");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn offers_parse_strictly() {
        let (id, limits, len) = parse("x 1500 0 12").unwrap();
        assert_eq!((id.as_str(), len), ("x", 12));
        assert_eq!(limits.idle, Some(Duration::from_millis(1500)));
        assert_eq!(limits.lifetime, None);
        for bad in ["", " 1 2 3", "x 1 2", "x 1 2 3 4", "x a 2 3", "x 1 2 -3"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
