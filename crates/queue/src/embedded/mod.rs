//! The embedded backend: calls and results live in an append-only log in the data directory
//! (see [`log`]); in memory there is only an index of where each waiting one is ([`index`]),
//! so bodies are read back from disk when delivered and memory does not grow with them. An
//! accept returns once its `Put` record is fdatasync'd (group commit), after its function and
//! the queue as a whole were checked against the [`Limits`]; an ack is written without
//! waiting, since losing it only means a redelivery. A call with a callback is replaced by its
//! `Result` record (result and ack in one durable batch) before it counts as done. Dead letters
//! live in their own directory ([`dead`]).

mod dead;
mod index;
mod log;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use crate::codec::{get_call, get_result, Reader};
use crate::{
    Call, CallResult, DeadLetter, DeadLetterInfo, Delivery, Failed, Limits, QueueError, QueueStats,
    ResultDelivery, Timing, Token,
};
use dead::DeadDir;
use index::{Entry, Lane, Usage};
use log::{ack_record, put_record, result_record, Batch, Loc, LogHandle, KIND_PUT, KIND_RESULT};

/// Records larger than this are read back on a blocking thread.
const INLINE_READ: u32 = 64 << 10;

/// Settings of the embedded queue.
#[derive(Clone)]
pub struct EmbeddedConfig {
    /// Directory of the log segments and the dead letters.
    pub dir: PathBuf,
    /// A segment is closed once it is this large.
    pub segment_bytes: u64,
    /// Clock and jitter.
    pub timing: Timing,
    /// What the queue holds at most.
    pub limits: Limits,
}

impl EmbeddedConfig {
    /// Defaults for `dir`: 64 MiB segments, the system clock, the default limits.
    pub fn new(dir: PathBuf) -> Self {
        EmbeddedConfig {
            dir,
            segment_bytes: 64 << 20,
            timing: Timing::default(),
            limits: Limits::default(),
        }
    }
}

/// Which lane a record is in.
#[derive(Clone, Copy)]
enum At<'a> {
    Queue(&'a str),
    Results,
}

struct State {
    next_seq: u64,
    lanes: HashMap<String, Lane>,
    results: Lane,
    usage: Usage,
}

impl State {
    fn lane(&mut self, at: At<'_>) -> &mut Lane {
        match at {
            At::Queue(name) => self.lanes.entry(name.to_string()).or_default(),
            At::Results => &mut self.results,
        }
    }

    /// Drop record `seq` from its lane and the usage.
    fn forget(&mut self, at: At<'_>, seq: u64) {
        if let Some(e) = self.lane(at).remove(seq) {
            self.usage.release(&e.function, u64::from(e.loc.len));
        }
    }

    /// Add record `seq` of `function` at `loc` (counted, never refused).
    fn put(&mut self, at: At<'_>, seq: u64, function: &str, loc: Loc, due_ms: u64) {
        let function = self.usage.add(function, u64::from(loc.len));
        self.lane(at).add(seq, Entry { loc, function }, due_ms);
    }
}

/// The embedded queue.
pub struct Embedded {
    dir: PathBuf,
    log: LogHandle,
    state: Mutex<State>,
    dead: Arc<Mutex<DeadDir>>,
    /// Serialises dead-letter retries and purges.
    admin: tokio::sync::Mutex<()>,
    timing: Timing,
    limits: Limits,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn decode_put(payload: &Bytes) -> Result<Call, QueueError> {
    let mut r = Reader::over(payload);
    match r.u8()? {
        KIND_PUT => {
            r.skip(16)?;
            get_call(&mut r)
        }
        k => Err(QueueError::Corrupt(format!(
            "expected a call, found kind {k}"
        ))),
    }
}

fn decode_result_record(payload: &Bytes) -> Result<CallResult, QueueError> {
    let mut r = Reader::over(payload);
    match r.u8()? {
        KIND_RESULT => {
            r.skip(16)?;
            get_result(&mut r)
        }
        k => Err(QueueError::Corrupt(format!(
            "expected a result, found kind {k}"
        ))),
    }
}

impl Embedded {
    /// Open (or create) the queue in `cfg.dir`, replaying what a previous run left.
    pub fn open(cfg: EmbeddedConfig) -> Result<Embedded, QueueError> {
        let replayed = log::replay(&cfg.dir)?;
        let handle = log::start_writer(&cfg.dir, &replayed, cfg.segment_bytes)?;
        let dead = DeadDir::open(&cfg.dir, cfg.limits.max_dead_letters, cfg.limits.max_bytes)?;
        let mut state = State {
            next_seq: replayed.max_seq + 1,
            lanes: HashMap::new(),
            results: Lane::default(),
            usage: Usage::default(),
        };
        let n = replayed.pending.len();
        for (seq, p) in replayed.pending {
            let at = match p.kind {
                KIND_RESULT => At::Results,
                _ => At::Queue(&p.queue),
            };
            state.put(at, seq, &p.function, p.loc, p.not_before);
        }
        if n > 0 {
            tracing::info!(
                pending = n,
                "queue: replayed pending async calls and results"
            );
        }
        Ok(Embedded {
            dir: cfg.dir,
            log: handle,
            state: Mutex::new(state),
            dead: Arc::new(Mutex::new(dead)),
            admin: tokio::sync::Mutex::new(()),
            timing: cfg.timing,
            limits: cfg.limits,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
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

    /// Write `data` durably; returns where it starts.
    async fn write(
        &self,
        data: Vec<u8>,
        puts: Vec<u64>,
        acks: Vec<u64>,
    ) -> Result<(u64, u64), QueueError> {
        self.log
            .write(Batch {
                data,
                puts,
                acks,
                done: None,
            })
            .await
    }

    /// Store a new call; `capped` checks it against the limits first.
    pub(crate) async fn enqueue(&self, call: Call, capped: bool) -> Result<(), QueueError> {
        let seq = self.next_seq();
        let mut data = Vec::with_capacity(256 + call.body.len());
        put_record(&mut data, seq, 0, &call);
        let len = data.len() as u32;
        let function = {
            let mut st = self.lock();
            if capped {
                st.usage
                    .reserve(&call.function, u64::from(len), &self.limits)?
            } else {
                st.usage.add(&call.function, u64::from(len))
            }
        };
        let landed = self.write(data, vec![seq], vec![]).await;
        let mut st = self.lock();
        match landed {
            Ok((segment, offset)) => {
                let loc = Loc {
                    segment,
                    offset,
                    len,
                };
                st.lane(At::Queue(&call.queue))
                    .add(seq, Entry { loc, function }, 0);
                Ok(())
            }
            Err(e) => {
                st.usage.release(&call.function, u64::from(len));
                Err(e)
            }
        }
    }

    async fn read(&self, loc: Loc) -> Result<Bytes, QueueError> {
        if loc.len <= INLINE_READ {
            return log::read_record(&self.dir, loc);
        }
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || log::read_record(&dir, loc))
            .await
            .map_err(|e| QueueError::Io(std::io::Error::other(e)))?
    }

    /// Take the next due record of lane `at`, read back from the log and decoded.
    async fn take<T>(
        &self,
        at: At<'_>,
        decode: impl Fn(&Bytes) -> Result<T, QueueError>,
    ) -> (u64, T) {
        loop {
            let (taken, notify, wait) = {
                let now = self.timing.clock.now_ms();
                let mut st = self.lock();
                let lane = st.lane(at);
                (lane.take_due(now), lane.notify.clone(), lane.wait_ms(now))
            };
            if let Some((seq, loc)) = taken {
                match self.read(loc).await.and_then(|b| decode(&b)) {
                    Ok(item) => return (seq, item),
                    Err(e @ QueueError::Corrupt(_)) => {
                        tracing::error!(seq, "queue: dropping a record that cannot be read: {e}");
                        self.drop_record(at, seq);
                    }
                    Err(e) => {
                        // The disk may come back (a full descriptor table, say): try again.
                        tracing::warn!(
                            seq,
                            "queue: cannot read a record, trying again in 1 s: {e}"
                        );
                        let due = self.timing.clock.now_ms() + 1000;
                        self.lock().lane(at).put_back(seq, due);
                    }
                }
                continue;
            }
            let _ = tokio::time::timeout(Duration::from_millis(wait), notify.notified()).await;
        }
    }

    pub(crate) async fn receive(&self, queue: &str) -> Result<Delivery, QueueError> {
        let (seq, call) = self.take(At::Queue(queue), decode_put).await;
        Ok(Delivery {
            attempt: call.attempts + 1,
            call,
            token: Token::Embedded(seq),
        })
    }

    pub(crate) async fn receive_result(&self) -> Result<ResultDelivery, QueueError> {
        let (seq, result) = self.take(At::Results, decode_result_record).await;
        Ok(ResultDelivery {
            attempt: result.attempts + 1,
            result,
            token: Token::Embedded(seq),
        })
    }

    /// Forget record `seq` and log its ack without waiting.
    fn drop_record(&self, at: At<'_>, seq: u64) {
        self.lock().forget(at, seq);
        let mut data = Vec::with_capacity(16);
        ack_record(&mut data, seq);
        self.log.write_later(Batch {
            data,
            puts: vec![],
            acks: vec![seq],
            done: None,
        });
    }

    /// Replace record `seq` by a new one (`encode` writes it under the given sequence number)
    /// in lane `to`, due at `due_ms`, in one durable batch.
    async fn replace(
        &self,
        (from, seq): (At<'_>, u64),
        to: At<'_>,
        function: &str,
        due_ms: u64,
        encode: impl FnOnce(&mut Vec<u8>, u64),
    ) -> Result<(), QueueError> {
        let new = self.next_seq();
        let mut data = Vec::new();
        encode(&mut data, new);
        let len = data.len() as u32;
        ack_record(&mut data, seq);
        // On failure the old record stays: it is delivered again after a restart.
        let (segment, offset) = self.write(data, vec![new], vec![seq]).await?;
        let loc = Loc {
            segment,
            offset,
            len,
        };
        let mut st = self.lock();
        st.forget(from, seq);
        st.put(to, new, function, loc, due_ms);
        Ok(())
    }

    /// Replace call `seq` by `call` due after `delay`.
    pub(crate) async fn reschedule(
        &self,
        seq: u64,
        call: Call,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let due = (self.timing.clock.now_ms() + delay.as_millis() as u64).max(1);
        let at = At::Queue(&call.queue);
        self.replace((at, seq), at, &call.function, due, |out, new| {
            put_record(out, new, due, &call)
        })
        .await
    }

    /// End call `seq` of `queue`: store its dead letter, then its result or its ack.
    pub(crate) async fn finish(
        &self,
        queue: &str,
        seq: u64,
        dead: Option<DeadLetter>,
        result: Option<CallResult>,
    ) -> Result<(), QueueError> {
        if let Some(d) = dead {
            self.store_dead(d).await?;
        }
        match result {
            None => {
                self.drop_record(At::Queue(queue), seq);
                Ok(())
            }
            Some(r) => {
                self.replace(
                    (At::Queue(queue), seq),
                    At::Results,
                    &r.function,
                    0,
                    |out, new| result_record(out, new, 0, &r),
                )
                .await
            }
        }
    }

    pub(crate) fn ack_result(&self, seq: u64) {
        self.drop_record(At::Results, seq);
    }

    /// Replace result `seq` by `result`, its callback due after `delay`.
    pub(crate) async fn reschedule_result(
        &self,
        seq: u64,
        result: CallResult,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let due = (self.timing.clock.now_ms() + delay.as_millis() as u64).max(1);
        let at = At::Results;
        self.replace((at, seq), at, &result.function, due, |out, new| {
            result_record(out, new, due, &result)
        })
        .await
    }

    pub(crate) async fn dead_letter_result(
        &self,
        seq: u64,
        d: DeadLetter,
    ) -> Result<(), QueueError> {
        self.store_dead(d).await?;
        self.ack_result(seq);
        Ok(())
    }

    /// Run `f` on the dead letters on a blocking thread (they fsync).
    async fn with_dead<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DeadDir) -> Result<T, QueueError> + Send + 'static,
    ) -> Result<T, QueueError> {
        let dead = self.dead.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&dead)))
            .await
            .map_err(|e| QueueError::Io(std::io::Error::other(e)))?
    }

    pub(crate) async fn store_dead(&self, d: DeadLetter) -> Result<(), QueueError> {
        self.with_dead(move |dead| dead.store(&d)).await
    }

    pub(crate) async fn dead_letters(&self) -> Vec<DeadLetterInfo> {
        lock(&self.dead).list()
    }

    pub(crate) async fn retry_dead_letter(
        &self,
        id: &str,
        now_ms: u64,
        callback_until_ms: u64,
    ) -> Result<bool, QueueError> {
        let _admin = self.admin.lock().await;
        let id = id.to_string();
        let found = self
            .with_dead(move |dead| match dead.find(&id) {
                Some(n) => Ok(Some((n, dead.load(n)?))),
                None => Ok(None),
            })
            .await?;
        let Some((n, letter)) = found else {
            return Ok(false);
        };
        match letter.failed {
            Failed::Call(mut call) => {
                call.attempts = 0;
                call.accepted_ms = now_ms;
                self.enqueue(call, false).await?;
            }
            Failed::Callback(mut result) => {
                result.attempts = 0;
                result.give_up_ms = callback_until_ms;
                self.add_result(result).await?;
            }
        }
        self.with_dead(move |dead| dead.remove(n)).await?;
        Ok(true)
    }

    /// Store a result (from a dead letter) for its callback.
    async fn add_result(&self, result: CallResult) -> Result<(), QueueError> {
        let seq = self.next_seq();
        let mut data = Vec::with_capacity(256 + result.body.len());
        result_record(&mut data, seq, 0, &result);
        let len = data.len() as u32;
        let (segment, offset) = self.write(data, vec![seq], vec![]).await?;
        let loc = Loc {
            segment,
            offset,
            len,
        };
        self.lock().put(At::Results, seq, &result.function, loc, 0);
        Ok(())
    }

    pub(crate) async fn purge_dead_letters(&self) -> Result<usize, QueueError> {
        let _admin = self.admin.lock().await;
        self.with_dead(|dead| dead.purge()).await
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
                depth: l.depth(),
                inflight: l.inflight(),
                dead: 0,
            })
            .collect()
    }

    pub(crate) fn callback_stats(&self) -> QueueStats {
        let st = self.lock();
        QueueStats {
            queue: "callbacks".into(),
            depth: st.results.depth(),
            inflight: st.results.inflight(),
            dead: 0,
        }
    }
}

#[cfg(test)]
mod tests;
