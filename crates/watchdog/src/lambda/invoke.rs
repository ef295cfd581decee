//! One invocation: wait for the runtime slot (one event at a time), queue the event for the
//! runtime's `/next`, and wait for its answer until the deadline, which counts from the
//! hand-over. A late runtime is killed (and started again by the supervisor).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use super::errors::{exited, init_timed_out, timed_out};
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
            InitFailure::TimedOut(limit) => Outcome::Error(init_timed_out(id, *limit)),
        }
    }
}

/// An event handed to the runtime whose caller may go away: then the runtime keeps it (and
/// the slot) until it answers or its deadline kills it, as if the caller were still there.
struct Handed {
    shared: Arc<Shared>,
    id: String,
    deadline: Option<(Instant, Duration)>,
    reply: Option<oneshot::Receiver<Outcome>>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Handed {
    /// The outcome, or the timeout error once the deadline has passed.
    async fn outcome(&mut self) -> Option<Outcome> {
        let reply = self.reply.as_mut()?;
        let outcome = match self.deadline {
            Some((at, limit)) => tokio::select! {
                r = &mut *reply => r.ok(),
                _ = tokio::time::sleep_until(at.into()) => {
                    if self.shared.expire(&self.id, limit) {
                        Some(Outcome::Error(timed_out(&self.id, limit)))
                    } else {
                        reply.try_recv().ok()
                    }
                }
            },
            None => reply.await.ok(),
        };
        self.reply = None;
        outcome
    }
}

impl Drop for Handed {
    fn drop(&mut self) {
        if self.reply.is_none() {
            return;
        }
        // The caller is gone mid-invocation: keep the deadline (and the slot) without it.
        let mut rest = Handed {
            shared: Arc::clone(&self.shared),
            id: std::mem::take(&mut self.id),
            deadline: self.deadline,
            reply: self.reply.take(),
            permit: self.permit.take(),
        };
        tokio::spawn(async move {
            rest.outcome().await;
        });
    }
}

impl Shared {
    /// Runs `event` on the runtime, one at a time.
    pub(crate) async fn invoke(self: &Arc<Self>, event: Event) -> Invoked {
        // The semaphore is never closed.
        let permit = Arc::clone(&self.slot).acquire_owned().await.ok();
        let id = event.id.clone();
        let tail = event.tail;
        let (outcome, handed, permit) = self.run(event, permit).await;
        let log = match (tail, handed) {
            (true, Some(at)) => Some(self.logs.finish(&id, at.elapsed(), &self.settings()).await),
            (true, None) => Some(self.logs.empty(&id, &self.settings())),
            (false, _) => None,
        };
        Invoked {
            outcome,
            permit,
            log,
        }
    }

    /// Queues `event` and waits for its outcome; when it was handed over, too.
    async fn run(
        self: &Arc<Self>,
        event: Event,
        permit: Option<OwnedSemaphorePermit>,
    ) -> (Outcome, Option<Instant>, Option<OwnedSemaphorePermit>) {
        let id = event.id.clone();
        let mut state = self.state.subscribe();
        let failure = state.borrow_and_update().failure.clone();
        if let Some(f) = failure {
            return (f.error(&id), None, permit);
        }
        let (handed_tx, mut handed_rx) = oneshot::channel();
        let (reply_tx, reply_rx) = oneshot::channel();
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
                        return (f.error(&id), None, permit);
                    }
                }
                (&mut handed_rx).await.ok()
            }
        };
        let Some(handed) = handed else {
            return (
                Outcome::Error(exited(&id, "the runtime stopped")),
                None,
                permit,
            );
        };
        let mut inflight = Handed {
            shared: Arc::clone(self),
            id,
            deadline: self.settings().exec_timeout.map(|t| (handed + t, t)),
            reply: Some(reply_rx),
            permit,
        };
        let outcome = inflight
            .outcome()
            .await
            .unwrap_or_else(|| Outcome::Error(exited(&inflight.id, "the runtime stopped")));
        (outcome, Some(handed), inflight.permit.take())
    }

    /// The deadline of invocation `id` passed: if it is still in progress, it is over and
    /// the runtime is killed (and started again). Whether it was.
    pub(crate) fn expire(&self, id: &str, limit: Duration) -> bool {
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
        }
        ours
    }
}
