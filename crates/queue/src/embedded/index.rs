//! The embedded queue's memory: per named queue (and one for results waiting for their
//! callback) a FIFO of due records, a set ordered by due time for those waiting for a retry,
//! and the set being delivered; each record is only its location in the log and its
//! function, so memory grows with the number of waiting calls, never with their bodies.
//! [`Usage`] counts records and bytes per function and in all against the [`Limits`].

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::Notify;

use super::log::Loc;
use crate::{Limits, QueueError};

/// One waiting record.
pub(crate) struct Entry {
    /// Where it is in the log.
    pub(crate) loc: Loc,
    /// Its function (shared with [`Usage`]).
    pub(crate) function: Arc<str>,
}

/// Records of one queue (or the results).
#[derive(Default)]
pub(crate) struct Lane {
    ready: VecDeque<u64>,
    delayed: BTreeSet<(u64, u64)>,
    entries: HashMap<u64, Entry>,
    inflight: HashSet<u64>,
    /// Woken when a record is added.
    pub(crate) notify: Arc<Notify>,
}

impl Lane {
    /// Add record `seq`, due at `due_ms` (0: now).
    pub(crate) fn add(&mut self, seq: u64, entry: Entry, due_ms: u64) {
        if due_ms > 0 {
            self.delayed.insert((due_ms, seq));
        } else {
            self.ready.push_back(seq);
        }
        self.entries.insert(seq, entry);
        self.notify.notify_one();
    }

    /// Take the oldest due record, marking it in flight.
    pub(crate) fn take_due(&mut self, now_ms: u64) -> Option<(u64, Loc)> {
        while let Some(&(due, seq)) = self.delayed.first() {
            if due > now_ms {
                break;
            }
            self.delayed.pop_first();
            self.ready.push_back(seq);
        }
        while let Some(seq) = self.ready.pop_front() {
            if let Some(e) = self.entries.get(&seq) {
                self.inflight.insert(seq);
                return Some((seq, e.loc));
            }
        }
        None
    }

    /// How long to wait before looking again (at most 200 ms, so an injected clock is
    /// followed too).
    pub(crate) fn wait_ms(&self, now_ms: u64) -> u64 {
        self.delayed
            .first()
            .map_or(200, |&(due, _)| due.saturating_sub(now_ms).clamp(1, 200))
    }

    /// Hand record `seq` out again at `due_ms` (it was taken but could not be read).
    pub(crate) fn put_back(&mut self, seq: u64, due_ms: u64) {
        if self.inflight.remove(&seq) {
            self.delayed.insert((due_ms, seq));
        }
    }

    /// Drop record `seq` (delivered, moved or dead).
    pub(crate) fn remove(&mut self, seq: u64) -> Option<Entry> {
        self.inflight.remove(&seq);
        self.entries.remove(&seq)
    }

    /// Records waiting (due or not).
    pub(crate) fn depth(&self) -> u64 {
        (self.entries.len() - self.inflight.len()) as u64
    }

    /// Records being delivered.
    pub(crate) fn inflight(&self) -> u64 {
        self.inflight.len() as u64
    }
}

#[derive(Default, Clone, Copy)]
struct Use {
    count: u64,
    bytes: u64,
}

/// Records and bytes held per function and in all.
#[derive(Default)]
pub(crate) struct Usage {
    per_fn: HashMap<Arc<str>, Use>,
    total: Use,
}

impl Usage {
    fn key(&mut self, function: &str) -> Arc<str> {
        match self.per_fn.get_key_value(function) {
            Some((k, _)) => k.clone(),
            None => {
                let k: Arc<str> = Arc::from(function);
                self.per_fn.insert(k.clone(), Use::default());
                k
            }
        }
    }

    /// Count a record of `bytes` for `function`, refusing it when `limits` would be passed.
    pub(crate) fn reserve(
        &mut self,
        function: &str,
        bytes: u64,
        limits: &Limits,
    ) -> Result<Arc<str>, QueueError> {
        let f = self.per_fn.get(function).copied().unwrap_or_default();
        let full = |what: String| Err(QueueError::Full(what));
        if f.count >= limits.max_depth_per_function {
            return full(format!(
                "function {function:?} already has {} async calls waiting, the limit per function",
                f.count
            ));
        }
        if f.bytes + bytes > limits.max_bytes_per_function {
            return full(format!(
                "function {function:?} has {} bytes of async calls waiting and this call would \
                 pass the limit per function of {} bytes",
                f.bytes, limits.max_bytes_per_function
            ));
        }
        if self.total.count >= limits.max_depth {
            return full(format!(
                "the queue already holds {} async calls, its limit",
                self.total.count
            ));
        }
        if self.total.bytes + bytes > limits.max_bytes {
            return full(format!(
                "the queue holds {} bytes of async calls and this call would pass its limit of {} \
                 bytes",
                self.total.bytes, limits.max_bytes
            ));
        }
        Ok(self.add(function, bytes))
    }

    /// Count a record without checking the limits (results, retries, replay).
    pub(crate) fn add(&mut self, function: &str, bytes: u64) -> Arc<str> {
        let k = self.key(function);
        if let Some(u) = self.per_fn.get_mut(&k) {
            u.count += 1;
            u.bytes += bytes;
        }
        self.total.count += 1;
        self.total.bytes += bytes;
        k
    }

    /// Forget a record counted with [`Usage::reserve`] or [`Usage::add`].
    pub(crate) fn release(&mut self, function: &str, bytes: u64) {
        if let Some(u) = self.per_fn.get_mut(function) {
            u.count = u.count.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(bytes);
            if u.count == 0 {
                self.per_fn.remove(function);
            }
        }
        self.total.count = self.total.count.saturating_sub(1);
        self.total.bytes = self.total.bytes.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_depth: 5,
            max_bytes: 1000,
            max_depth_per_function: 3,
            max_bytes_per_function: 500,
            max_dead_letters: 10,
        }
    }

    #[test]
    fn usage_is_capped_per_function_and_in_all() {
        let mut u = Usage::default();
        let l = limits();
        for _ in 0..3 {
            u.reserve("a", 10, &l).unwrap();
        }
        let e = u.reserve("a", 10, &l).unwrap_err().to_string();
        assert!(e.contains("\"a\" already has 3 async calls waiting"), "{e}");
        u.reserve("b", 10, &l).unwrap();
        let e = u.reserve("b", 491, &l).unwrap_err().to_string();
        assert!(e.contains("limit per function of 500 bytes"), "{e}");
        u.reserve("c", 10, &l).unwrap();
        let e = u.reserve("d", 1, &l).unwrap_err().to_string();
        assert!(e.contains("already holds 5 async calls"), "{e}");
        // Results and retries are counted but never refused.
        u.add("a", 10);
        u.release("a", 10);
        u.release("a", 10);
        u.reserve("d", 1, &l).unwrap();
        for _ in 0..2 {
            u.release("a", 10);
        }
        assert!(!u.per_fn.contains_key("a"));
    }

    #[test]
    fn lanes_hand_out_due_records_in_order() {
        let mut lane = Lane::default();
        let loc = |n| Loc {
            segment: 1,
            offset: n,
            len: 10,
        };
        let entry = |n| Entry {
            loc: loc(n),
            function: Arc::from("f"),
        };
        lane.add(1, entry(1), 0);
        lane.add(2, entry(2), 500);
        lane.add(3, entry(3), 0);
        assert_eq!(lane.take_due(100), Some((1, loc(1))));
        assert_eq!(lane.take_due(100), Some((3, loc(3))));
        assert_eq!(lane.take_due(100), None);
        assert_eq!(lane.wait_ms(100), 200);
        assert_eq!(lane.wait_ms(450), 50);
        assert_eq!((lane.depth(), lane.inflight()), (1, 2));
        assert_eq!(lane.take_due(500), Some((2, loc(2))));
        assert!(lane.remove(1).is_some());
        assert_eq!((lane.depth(), lane.inflight()), (0, 2));
        lane.put_back(3, 900);
        assert_eq!((lane.depth(), lane.inflight()), (1, 1));
        assert_eq!(lane.take_due(800), None);
        assert_eq!(lane.take_due(900), Some((3, loc(3))));
    }
}
