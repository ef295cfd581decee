//! One invocation: wait for the runtime slot (one event at a time), queue the event for the
//! runtime's `/next`, and wait for its answer until the deadline, which counts from the
//! hand-over. A late runtime is killed (and started again by the supervisor).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::errors::{exited, timed_out};
use super::{Event, InitFailure, Outcome, Queued, Shared};

/// An invocation's end: its outcome, the slot (to hold while a stream lasts) and the log tail.
pub(crate) struct Invoked {
    /// How it ended.
    pub outcome: Outcome,
    /// The runtime slot; released when dropped.
    pub permit: Option<OwnedSemaphorePermit>,
    /// Base64 of the framed log tail, when asked for.
    pub log: Option<String>,
}

impl InitFailure {
    /// The caller's error for this failure.
    fn error(&self, id: &str) -> Outcome {
        match self {
            InitFailure::Posted(body) => Outcome::Error(body.clone()),
            InitFailure::Exited(status) => Outcome::Error(exited(id, status)),
        }
    }
}

impl Shared {
    /// Runs `event` on the runtime, one at a time.
    pub(crate) async fn invoke(self: &Arc<Self>, event: Event) -> Invoked {
        // The semaphore is never closed.
        let permit = Arc::clone(&self.slot).acquire_owned().await.ok();
        let id = event.id.clone();
        let tail = event.tail;
        let (outcome, handed) = self.run(event).await;
        let log = match (tail, handed) {
            (true, Some(at)) => Some(self.logs.finish(&id, at.elapsed(), &self.settings).await),
            (true, None) => Some(self.logs.empty(&id, &self.settings)),
            (false, _) => None,
        };
        Invoked {
            outcome,
            permit,
            log,
        }
    }

    /// Queues `event` and waits for its outcome; when it was handed over, too.
    async fn run(&self, event: Event) -> (Outcome, Option<Instant>) {
        let id = event.id.clone();
        let mut state = self.state.subscribe();
        let failure = state.borrow_and_update().failure.clone();
        if let Some(f) = failure {
            return (f.error(&id), None);
        }
        let (handed_tx, mut handed_rx) = oneshot::channel();
        let (reply_tx, mut reply_rx) = oneshot::channel();
        self.lock().queued = Some(Queued {
            event,
            handed: handed_tx,
            reply: reply_tx,
        });
        self.queued_notify.notify_one();
        let handed = tokio::select! {
            at = &mut handed_rx => at.ok(),
            _ = super::until(&mut state, |s| s.failure.is_some()) => {
                let failure = self.state.borrow().failure.clone();
                // Not taken yet: it fails with the init error; else it was just handed over.
                if self.lock().queued.take().is_some() {
                    if let Some(f) = failure {
                        return (f.error(&id), None);
                    }
                }
                (&mut handed_rx).await.ok()
            }
        };
        let Some(handed) = handed else {
            return (Outcome::Error(exited(&id, "the runtime stopped")), None);
        };
        let outcome = match self.settings.exec_timeout {
            Some(limit) => tokio::select! {
                r = &mut reply_rx => r.ok(),
                _ = tokio::time::sleep_until((handed + limit).into()) => {
                    let ours = {
                        let mut inner = self.lock();
                        let ours = inner.current.as_ref().is_some_and(|c| c.id == id);
                        if ours {
                            inner.current = None;
                        }
                        ours
                    };
                    if ours {
                        tracing::warn!(request_id = %id, ?limit, "invocation timed out; restarting the runtime");
                        self.kill_current();
                        Some(Outcome::Error(timed_out(&id, limit)))
                    } else {
                        reply_rx.try_recv().ok()
                    }
                }
            },
            None => reply_rx.await.ok(),
        };
        let outcome = outcome.unwrap_or_else(|| Outcome::Error(exited(&id, "the runtime stopped")));
        (outcome, Some(handed))
    }
}
