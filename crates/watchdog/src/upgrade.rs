//! HTTP mode's upgraded connections (WebSockets): when the function answers `101 Switching
//! Protocols` to an `Upgrade` request, the client's connection and the function's are
//! spliced once both are handed over, for as long as either keeps it open. Each spliced
//! connection holds its in-flight slot (`max_inflight`, `/_/ready`) until it ends. At
//! shutdown they get `drain_grace` to finish before they are closed (FIN both ways), and the
//! function process is stopped only after that.
//!
//! When the gateway offers to hand the client's connection over (`virga_http::handoff`),
//! the client's socket is spliced with the function's here and the gateway's connection is
//! only the lifeline; the in-flight slot and the drain are the same.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use virga_http::handoff::{Expected, Handoffs};
use virga_http::upgrade::{splice, End, Limits};

/// How long closed connections get to finish after their grace, before the process stops.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long an accepted hand-off may take to arrive before the gateway's connection is
/// spliced instead.
const HANDOFF_WAIT: Duration = Duration::from_secs(5);

/// Both ends of a switch the function agreed to (the client's connection, handed over once
/// the `101` is written, and the function's) and the gateway's hand-off id if it asked for
/// one, riding on the `101` answer's extensions until the server, which holds the in-flight
/// slot, takes them.
#[derive(Clone)]
pub(crate) struct Pending(Arc<Mutex<Option<Switch>>>);

/// What [`Pending`] carries.
pub(crate) struct Switch {
    client: OnUpgrade,
    upstream: OnUpgrade,
    handoff: Option<String>,
}

impl Pending {
    /// The ends of a switch, and the hand-off id its handshake carried.
    pub(crate) fn new(client: OnUpgrade, upstream: OnUpgrade, handoff: Option<String>) -> Pending {
        Pending(Arc::new(Mutex::new(Some(Switch {
            client,
            upstream,
            handoff,
        }))))
    }

    /// The ends, the first time this is asked.
    pub(crate) fn take(&self) -> Option<Switch> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The open spliced connections of one watchdog.
pub(crate) struct Upgrades {
    /// Every splice holds one of its receivers: its count is the number open.
    open: watch::Sender<()>,
    /// Set when the grace is over: every splice closes.
    stop: watch::Sender<bool>,
    grace: Duration,
    /// Where the gateway hands client connections over, if it may.
    handoffs: Option<Arc<Handoffs>>,
}

impl Upgrades {
    /// No connection yet; at shutdown, open ones get `grace`.
    pub(crate) fn new(grace: Duration, handoffs: Option<Arc<Handoffs>>) -> Upgrades {
        Upgrades {
            open: watch::channel(()).0,
            stop: watch::channel(false).0,
            grace,
            handoffs,
        }
    }

    /// Splice `switch`'s connections in a task of their own, holding `slot` until it ends;
    /// true if the client's connection is to be handed over (the `101` says so).
    pub(crate) fn start<G: Send + 'static>(&self, switch: Switch, slot: G) -> bool {
        let open = self.open.subscribe();
        let mut stop = self.stop.subscribe();
        let expected = match (&self.handoffs, &switch.handoff) {
            (Some(h), Some(id)) => Some(h.expect(id)),
            _ => None,
        };
        let handed_off = expected.is_some();
        tokio::spawn(async move {
            let (client, upstream) = match tokio::try_join!(switch.client, switch.upstream) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade was not completed");
                    return;
                }
            };
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
            let end = match expected {
                Some(expected) => spliced_handed(client, upstream, expected, stopped).await,
                None => splice(client, upstream, Limits::default(), stopped).await,
            };
            if let End::Failed(e) = &end {
                tracing::debug!(error = %e, "upgraded connection failed");
            }
            drop(slot);
            drop(open);
        });
        handed_off
    }

    /// Wait for the open connections to end, at most the grace; then close what is left
    /// and wait briefly for those to go.
    pub(crate) async fn drain(&self) {
        let n = self.open.receiver_count();
        if n == 0 {
            return;
        }
        tracing::info!(open = n, grace = ?self.grace, "waiting for upgraded connections");
        if tokio::time::timeout(self.grace, self.open.closed())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.open.receiver_count(),
                "upgraded connections still open after drain_grace: closing them"
            );
            self.stop.send_replace(true);
            let _ = tokio::time::timeout(CLOSE_WAIT, self.open.closed()).await;
        }
    }
}

/// Splice the client's connection the gateway hands over with the function's; `lifeline` is
/// the gateway's handshake connection: its end (or any byte on it) ends the splice, and why
/// the splice ended is written on it. Without a hand-off in time, or with bytes on the
/// lifeline first (the gateway splices it after all), the lifeline is spliced instead.
async fn spliced_handed<L, U, S>(
    mut lifeline: L,
    mut upstream: U,
    mut expected: Expected,
    stopped: S,
) -> End
where
    L: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
    S: Future<Output = ()>,
{
    let mut first = [0u8; 4096];
    let handed = tokio::select! {
        h = expected.wait(HANDOFF_WAIT) => h,
        r = lifeline.read(&mut first) => {
            let n = match r {
                Ok(0) | Err(_) => return End::Closed(0, 0),
                Ok(n) => n,
            };
            if let Err(e) = upstream.write_all(&first[..n]).await {
                return End::Failed(e);
            }
            None
        }
    };
    drop(expected);
    let Some(handed) = handed else {
        return splice(lifeline, upstream, Limits::default(), stopped).await;
    };
    if let Err(e) = upstream.write_all(&handed.pending).await {
        return End::Failed(e);
    }
    let _ = handed.client.set_nodelay(true);
    let end = {
        let gone = async {
            let mut b = [0u8; 1];
            let _ = lifeline.read(&mut b).await;
        };
        let stop = async {
            tokio::select! {
                () = stopped => {}
                () = gone => {}
            }
        };
        splice(handed.client, upstream, handed.limits, stop).await
    };
    let _ = lifeline.write_all(end.reason().as_bytes()).await;
    let _ = tokio::time::timeout(CLOSE_WAIT, lifeline.shutdown()).await;
    end
}
