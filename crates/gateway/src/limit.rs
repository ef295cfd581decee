//! The connection cap of one listener, with a reserve. The first `public` connections are
//! served on every route. Beyond them, `reserve` more are accepted but served only for
//! `/system/*` and `/healthz`, one request each, so the platform's operators and health checks
//! get through when the public routes are full. A slow client cannot sit on the reserve
//! either: when it is full, a new connection takes the slot of the oldest reserve connection
//! that has not sent a complete request yet. Only when every reserve connection is being
//! served is a connection refused. The two tiers are counted apart, so a full reserve never
//! keeps a freed public slot from the next arrival.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::conn::Clock;

/// The connection cap of one listener.
pub(crate) struct Limiter {
    public: usize,
    reserve: usize,
    /// Connections holding a public slot.
    public_active: AtomicUsize,
    /// Connections holding a reserve slot.
    reserve_active: AtomicUsize,
    /// Reserve connections in arrival order, oldest first (closed ones are dropped lazily).
    reserved: Mutex<VecDeque<Arc<Clock>>>,
}

/// How a new connection is let in.
pub(crate) enum Admission {
    /// Served on every route.
    Public(Slot),
    /// Served only for `/system/*` and `/healthz`, one request.
    Reserve(Slot),
    /// Every slot is taken by a connection being served.
    Refused,
}

/// One connection's place under the cap; freed when dropped.
pub(crate) struct Slot {
    limiter: Arc<Limiter>,
    clock: Arc<Clock>,
    reserve: bool,
}

impl Slot {
    /// The connection's clock.
    pub(crate) fn clock(&self) -> &Arc<Clock> {
        &self.clock
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // An evicted connection's place already went to the one that evicted it.
        if self.clock.close() {
            self.limiter
                .count(self.reserve)
                .fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Limiter {
    /// A cap of `public` connections on every route plus `reserve` for `/system` and `/healthz`.
    pub(crate) fn new(public: usize, reserve: usize) -> Arc<Limiter> {
        Arc::new(Limiter {
            public,
            reserve,
            public_active: AtomicUsize::new(0),
            reserve_active: AtomicUsize::new(0),
            reserved: Mutex::new(VecDeque::new()),
        })
    }

    fn count(&self, reserve: bool) -> &AtomicUsize {
        if reserve {
            &self.reserve_active
        } else {
            &self.public_active
        }
    }

    /// Take a slot of the tier (`reserve` or public) if one is free.
    fn take(&self, reserve: bool) -> bool {
        let cap = if reserve { self.reserve } else { self.public };
        self.count(reserve)
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    /// Let a new connection in, or not.
    pub(crate) fn admit(self: &Arc<Self>) -> Admission {
        let slot = |reserve| Slot {
            limiter: self.clone(),
            clock: Clock::new(),
            reserve,
        };
        if self.take(false) {
            return Admission::Public(slot(false));
        }
        let mut queue = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        // Full: take over the slot of the oldest reserve connection still without a request.
        if !self.take(true) && !std::iter::from_fn(|| queue.pop_front()).any(|c| c.evict()) {
            return Admission::Refused;
        }
        // Served, closed and evicted connections stay queued until popped; drop them in bulk
        // before the queue outgrows the reserve (amortised constant time per connection).
        if queue.len() >= 2 * self.reserve.max(8) {
            queue.retain(|c| c.awaiting_first_request());
        }
        let s = slot(true);
        queue.push_back(s.clock.clone());
        Admission::Reserve(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(l: &Limiter) -> (usize, usize) {
        (
            l.public_active.load(Ordering::Acquire),
            l.reserve_active.load(Ordering::Acquire),
        )
    }

    fn take(a: Admission) -> (bool, Slot) {
        match a {
            Admission::Public(s) => (true, s),
            Admission::Reserve(s) => (false, s),
            Admission::Refused => panic!("refused"),
        }
    }

    #[test]
    fn public_then_reserve_then_evicts_the_oldest_waiting() {
        let l = Limiter::new(2, 2);
        let a = take(l.admit());
        let b = take(l.admit());
        assert!(a.0 && b.0);
        let r1 = take(l.admit());
        let r2 = take(l.admit());
        assert!(!r1.0 && !r2.0);
        assert_eq!(counts(&l), (2, 2));
        // r1 is being served: the next arrival evicts r2, the oldest still waiting.
        let seq = r1.1.clock().begin();
        assert!(seq.is_some());
        let r3 = take(l.admit());
        assert!(!r3.0);
        assert!(r2.1.clock().begin().is_none(), "r2 was evicted");
        assert_eq!(counts(&l), (2, 2));
        drop(r2);
        assert_eq!(counts(&l), (2, 2), "an evicted slot is not freed twice");
        // r1 served, r3 being served: nothing left to evict.
        r3.1.clock().begin();
        assert!(matches!(l.admit(), Admission::Refused));
        assert_eq!(counts(&l), (2, 2));
        // A public slot freed while the reserve is full goes to the next arrival.
        drop(a);
        let c = take(l.admit());
        assert!(c.0, "a freed public slot is public again");
        drop(r1);
        assert_eq!(counts(&l), (2, 1));
    }

    #[test]
    fn the_reserve_queue_stays_bounded() {
        let l = Limiter::new(0, 4);
        let mut held = Vec::new();
        for _ in 0..10_000 {
            let (_, s) = take(l.admit());
            s.clock().begin();
            held.push(s);
            if held.len() == 4 {
                held.clear();
            }
        }
        assert!(l.reserved.lock().unwrap().len() <= 16);
    }
}
