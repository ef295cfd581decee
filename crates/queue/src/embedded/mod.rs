//! The embedded backend: calls live in an append-only log in the data directory (see [`log`])
//! and, while pending, in memory per named queue: a FIFO of due calls, a set ordered by due
//! time for calls waiting for a retry, and the set being delivered. An accept returns once its
//! `Put` record is fdatasync'd (group commit); an ack is written without waiting, since losing
//! it only means a redelivery. Dead letters live in their own small file ([`dead`]).

mod dead;
mod log;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::{Call, DeadLetter, Delivery, QueueError, QueueStats, Timing, Token};
use dead::DeadFile;
use log::{ack_record, put_record, Batch, LogHandle};

/// Settings of the embedded queue.
#[derive(Clone)]
pub struct EmbeddedConfig {
    /// Directory of the log segments and the dead-letter file.
    pub dir: PathBuf,
    /// A segment is closed once it is this large.
    pub segment_bytes: u64,
    /// Clock and jitter.
    pub timing: Timing,
}

impl EmbeddedConfig {
    /// Defaults for `dir`: 64 MiB segments, the system clock.
    pub fn new(dir: PathBuf) -> Self {
        EmbeddedConfig {
            dir,
            segment_bytes: 64 << 20,
            timing: Timing::default(),
        }
    }
}

#[derive(Default)]
struct Lane {
    ready: VecDeque<u64>,
    delayed: BTreeSet<(u64, u64)>,
    calls: HashMap<u64, Call>,
    inflight: HashSet<u64>,
    notify: Arc<Notify>,
}

struct State {
    next_seq: u64,
    lanes: HashMap<String, Lane>,
}

impl State {
    fn lane(&mut self, name: &str) -> &mut Lane {
        self.lanes.entry(name.to_string()).or_default()
    }
}

/// The embedded queue.
pub struct Embedded {
    log: LogHandle,
    state: Mutex<State>,
    dead: tokio::sync::Mutex<DeadFile>,
    timing: Timing,
}

impl Embedded {
    /// Open (or create) the queue in `cfg.dir`, replaying what a previous run left.
    pub fn open(cfg: EmbeddedConfig) -> Result<Embedded, QueueError> {
        let replayed = log::replay(&cfg.dir)?;
        let handle = log::start_writer(&cfg.dir, &replayed, cfg.segment_bytes)?;
        let dead = DeadFile::open(&cfg.dir)?;
        let mut state = State {
            next_seq: replayed.max_seq + 1,
            lanes: HashMap::new(),
        };
        let n = replayed.pending.len();
        for (seq, (not_before, call)) in replayed.pending {
            let lane = state.lane(&call.queue);
            if not_before > 0 {
                lane.delayed.insert((not_before, seq));
            } else {
                lane.ready.push_back(seq);
            }
            lane.calls.insert(seq, call);
        }
        if n > 0 {
            tracing::info!(pending = n, "queue: replayed pending async calls");
        }
        Ok(Embedded {
            log: handle,
            state: Mutex::new(state),
            dead: tokio::sync::Mutex::new(dead),
            timing: cfg.timing,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_seq(&self) -> u64 {
        let mut st = self.lock();
        let seq = st.next_seq;
        st.next_seq += 1;
        seq
    }

    /// Number of fdatasyncs the log has done (group commit shares them).
    pub fn syncs(&self) -> u64 {
        self.log.syncs()
    }

    pub(crate) async fn enqueue(&self, call: Call) -> Result<(), QueueError> {
        let seq = self.next_seq();
        let mut data = Vec::with_capacity(256 + call.body.len());
        put_record(&mut data, seq, 0, &call);
        self.log
            .write(Batch {
                data,
                puts: vec![seq],
                acks: vec![],
                done: None,
            })
            .await?;
        let mut st = self.lock();
        let lane = st.lane(&call.queue);
        lane.ready.push_back(seq);
        lane.calls.insert(seq, call);
        lane.notify.notify_one();
        Ok(())
    }

    pub(crate) async fn receive(&self, queue: &str) -> Result<Delivery, QueueError> {
        loop {
            let (notify, wait) = {
                let now = self.timing.clock.now_ms();
                let mut st = self.lock();
                let lane = st.lane(queue);
                while let Some(&(due, seq)) = lane.delayed.first() {
                    if due > now {
                        break;
                    }
                    lane.delayed.pop_first();
                    lane.ready.push_back(seq);
                }
                while let Some(seq) = lane.ready.pop_front() {
                    if let Some(call) = lane.calls.get(&seq) {
                        lane.inflight.insert(seq);
                        return Ok(Delivery {
                            attempt: call.attempts + 1,
                            call: call.clone(),
                            token: Token::Embedded(seq),
                        });
                    }
                }
                // Re-check at least every 200 ms so an injected clock is followed too.
                let wait = lane
                    .delayed
                    .first()
                    .map_or(200, |&(due, _)| due.saturating_sub(now).clamp(1, 200));
                (lane.notify.clone(), Duration::from_millis(wait))
            };
            let _ = tokio::time::timeout(wait, notify.notified()).await;
        }
    }

    fn forget(&self, queue: &str, seq: u64) {
        let mut st = self.lock();
        let lane = st.lane(queue);
        lane.calls.remove(&seq);
        lane.inflight.remove(&seq);
    }

    pub(crate) async fn ack(&self, queue: &str, seq: u64) -> Result<(), QueueError> {
        self.forget(queue, seq);
        let mut data = Vec::with_capacity(16);
        ack_record(&mut data, seq);
        self.log.write_later(Batch {
            data,
            puts: vec![],
            acks: vec![seq],
            done: None,
        });
        Ok(())
    }

    /// Replace call `seq` by `call` due after `delay`, in one durable batch.
    pub(crate) async fn reschedule(
        &self,
        seq: u64,
        call: Call,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let new = self.next_seq();
        let due = self.timing.clock.now_ms() + delay.as_millis() as u64;
        let mut data = Vec::with_capacity(256 + call.body.len());
        put_record(&mut data, new, due.max(1), &call);
        ack_record(&mut data, seq);
        let queue = call.queue.clone();
        // On failure the call stays where it was: it is delivered again after a restart.
        self.log
            .write(Batch {
                data,
                puts: vec![new],
                acks: vec![seq],
                done: None,
            })
            .await?;
        let mut st = self.lock();
        let lane = st.lane(&queue);
        lane.calls.remove(&seq);
        lane.inflight.remove(&seq);
        lane.delayed.insert((due, new));
        lane.calls.insert(new, call);
        lane.notify.notify_one();
        Ok(())
    }

    pub(crate) async fn dead_letter(&self, seq: u64, d: DeadLetter) -> Result<(), QueueError> {
        let queue = d.call.queue.clone();
        {
            let mut file = self.dead.lock().await;
            let mut letters = file.letters.clone();
            letters.push(d);
            file.save(letters)?;
        }
        self.ack(&queue, seq).await
    }

    pub(crate) async fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead.lock().await.letters.clone()
    }

    pub(crate) async fn retry_dead_letter(
        &self,
        id: &str,
        now_ms: u64,
    ) -> Result<bool, QueueError> {
        let mut file = self.dead.lock().await;
        let Some(i) = file.letters.iter().position(|d| d.call.id == id) else {
            return Ok(false);
        };
        let mut call = file.letters[i].call.clone();
        call.attempts = 0;
        call.accepted_ms = now_ms;
        self.enqueue(call).await?;
        let mut letters = file.letters.clone();
        letters.remove(i);
        file.save(letters)?;
        Ok(true)
    }

    pub(crate) async fn purge_dead_letters(&self) -> Result<usize, QueueError> {
        let mut file = self.dead.lock().await;
        let n = file.letters.len();
        file.save(Vec::new())?;
        Ok(n)
    }

    pub(crate) fn known_queues(&self) -> Vec<String> {
        self.lock().lanes.keys().cloned().collect()
    }

    pub(crate) fn stats(&self) -> Vec<QueueStats> {
        self.lock()
            .lanes
            .iter()
            .map(|(name, l)| QueueStats {
                queue: name.clone(),
                depth: (l.calls.len() - l.inflight.len()) as u64,
                inflight: l.inflight.len() as u64,
                dead: 0,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
