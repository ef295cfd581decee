//! HTTP mode's upgraded connections (WebSockets): when the function answers `101 Switching
//! Protocols` to an `Upgrade` request, the client's connection and the function's are
//! spliced once both are handed over, for as long as either keeps it open. Each spliced
//! connection holds its in-flight slot (`max_inflight`, `/_/ready`) until it ends. At
//! shutdown they get `drain_grace` to finish before they are closed (FIN both ways), and the
//! function process is stopped only after that.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use virga_http::upgrade::{splice, End, Limits};

/// How long closed connections get to finish after their grace, before the process stops.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Both ends of a switch the function agreed to (the client's connection, handed over once
/// the `101` is written, and the function's), riding on the `101` answer's extensions until
/// the server, which holds the in-flight slot, takes them.
#[derive(Clone)]
pub(crate) struct Pending(Arc<Mutex<Option<(OnUpgrade, OnUpgrade)>>>);

impl Pending {
    /// The ends of a switch.
    pub(crate) fn new(client: OnUpgrade, upstream: OnUpgrade) -> Pending {
        Pending(Arc::new(Mutex::new(Some((client, upstream)))))
    }

    /// The ends, the first time this is asked.
    pub(crate) fn take(&self) -> Option<(OnUpgrade, OnUpgrade)> {
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
}

impl Upgrades {
    /// No connection yet; at shutdown, open ones get `grace`.
    pub(crate) fn new(grace: Duration) -> Upgrades {
        Upgrades {
            open: watch::channel(()).0,
            stop: watch::channel(false).0,
            grace,
        }
    }

    /// Splice `pending`'s connections in a task of their own, holding `slot` until it ends.
    pub(crate) fn start<G: Send + 'static>(
        &self,
        (client, upstream): (OnUpgrade, OnUpgrade),
        slot: G,
    ) {
        let open = self.open.subscribe();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade was not completed");
                    return;
                }
            };
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let end = splice(
                TokioIo::new(client),
                TokioIo::new(upstream),
                Limits::default(),
                stopped,
            )
            .await;
            if let End::Failed(e) = &end {
                tracing::debug!(error = %e, "upgraded connection failed");
            }
            drop(slot);
            drop(open);
        });
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
