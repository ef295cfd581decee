//! Backoff on failed sign-ins to `/system`, per client address. A few wrong passwords are free
//! (typos); after that each further one blocks the address for twice as long as the last, up to
//! [`MAX_DELAY`]. While blocked, the address gets 429 without its credentials being looked at,
//! so a guess made then tells nothing. Other addresses are not slowed: correct credentials from
//! them pass as before.
//!
//! Memory is bounded: at most [`MAX_ENTRIES`] addresses are tracked, plus the [`TRUSTED`]
//! ones (IPv6 by /64, since one host commands a whole /64), and entries are forgotten [`FORGET_AFTER`] after their last failure.
//! When an attacker with more addresses fills the table, the addresses without an entry share
//! one backoff, so more addresses cannot multiply the guessing rate; addresses already tracked,
//! and those that signed in recently ([`TRUSTED`] of them), keep their own.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong passwords an address may send before it is slowed down.
pub(crate) const FREE_FAILURES: u32 = 5;
/// The first block; each further failure doubles it.
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest block.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(300);
/// An address's failures are forgotten this long after its last one.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Addresses tracked at most.
const MAX_ENTRIES: usize = 16_384;
/// Addresses that signed in recently, exempt from the shared backoff of a full table.
const TRUSTED: usize = 64;

/// A client address as the backoff counts it: IPv4 as is, IPv6 by its /64 prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for Key {
    fn from(ip: IpAddr) -> Key {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Key::V4(v4.into()),
            IpAddr::V6(v6) => Key::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            failures: 0,
            last: now,
            blocked_until: None,
        }
    }

    fn stale(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last) > FORGET_AFTER
            && self.blocked_until.is_none_or(|t| t <= now)
    }

    /// Time left on the block, if blocked at `now`.
    fn wait(&self, now: Instant) -> Option<Duration> {
        self.blocked_until
            .map(|t| t.saturating_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// Count one failure at `now`; the block it earns, if any.
    fn fail(&mut self, now: Instant) -> Option<Duration> {
        if self.stale(now) {
            *self = Entry::new(now);
        }
        self.failures = self.failures.saturating_add(1);
        self.last = now;
        let over = self.failures.checked_sub(FREE_FAILURES + 1)?;
        let delay = FIRST_DELAY
            .checked_mul(1u32 << over.min(16))
            .map_or(MAX_DELAY, |d| d.min(MAX_DELAY));
        self.blocked_until = Some(now + delay);
        Some(delay)
    }
}

struct Table {
    entries: HashMap<Key, Entry>,
    /// The backoff shared by addresses without an entry while the table is full.
    overflow: Entry,
    trusted: VecDeque<Key>,
    capacity: usize,
    last_sweep: Instant,
}

impl Table {
    /// The entry of `key`, or the shared one when the table is full and `key` has none.
    fn entry(&mut self, key: Key, now: Instant) -> &mut Entry {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            // Sweeping is linear, so at most once a second even under a flood of new addresses.
            if now.saturating_duration_since(self.last_sweep) >= Duration::from_secs(1) {
                self.last_sweep = now;
                self.entries.retain(|_, e| !e.stale(now));
            }
            if self.entries.len() >= self.capacity && !self.trusted.contains(&key) {
                return &mut self.overflow;
            }
        }
        self.entries.entry(key).or_insert_with(|| Entry::new(now))
    }
}

/// Failed sign-ins per client address, and the blocks they earned.
pub(crate) struct Backoff {
    table: Mutex<Table>,
}

impl Backoff {
    /// An empty table.
    pub(crate) fn new() -> Backoff {
        Backoff::with_capacity(MAX_ENTRIES)
    }

    fn with_capacity(capacity: usize) -> Backoff {
        let now = Instant::now();
        Backoff {
            table: Mutex::new(Table {
                entries: HashMap::new(),
                overflow: Entry::new(now),
                trusted: VecDeque::new(),
                capacity,
                last_sweep: now,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How long `ip` must still wait before its credentials are looked at again.
    pub(crate) fn blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let key = Key::from(ip);
        let t = self.lock();
        match t.entries.get(&key) {
            Some(e) => e.wait(now),
            None if t.entries.len() >= t.capacity && !t.trusted.contains(&key) => {
                t.overflow.wait(now)
            }
            None => None,
        }
    }

    /// `ip` sent wrong credentials; the block this earns it, if any.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        self.lock().entry(Key::from(ip), now).fail(now)
    }

    /// `ip` signed in: its failures are forgiven and it keeps its own entry when the table fills.
    pub(crate) fn succeeded(&self, ip: IpAddr) {
        let key = Key::from(ip);
        let mut t = self.lock();
        t.entries.remove(&key);
        if !t.trusted.contains(&key) {
            if t.trusted.len() >= TRUSTED {
                t.trusted.pop_front();
            }
            t.trusted.push_back(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn blocks_after_the_free_failures_and_doubles() {
        let b = Backoff::new();
        let ip = v4(1);
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(b.failed(ip, t0), None);
            assert_eq!(b.blocked(ip, t0), None);
        }
        assert_eq!(b.failed(ip, t0), Some(Duration::from_secs(1)));
        assert_eq!(b.blocked(ip, t0), Some(Duration::from_secs(1)));
        assert_eq!(b.blocked(v4(2), t0), None, "other addresses are not slowed");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(b.blocked(ip, t1), None);
        assert_eq!(b.failed(ip, t1), Some(Duration::from_secs(2)));
        let mut t = t1;
        for _ in 0..20 {
            t += MAX_DELAY;
            assert!(b.failed(ip, t).unwrap() <= MAX_DELAY);
        }
        assert_eq!(b.failed(ip, t), Some(MAX_DELAY));
        b.succeeded(ip);
        assert_eq!(b.blocked(ip, t), None);
        assert_eq!(b.failed(ip, t), None, "a sign-in forgives the failures");
    }

    #[test]
    fn failures_are_forgotten() {
        let b = Backoff::new();
        let ip = v4(1);
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES {
            b.failed(ip, t0);
        }
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(b.failed(ip, later), None);
    }

    #[test]
    fn ipv6_counts_by_prefix() {
        let b = Backoff::new();
        let t0 = Instant::now();
        for i in 0..=FREE_FAILURES {
            let ip = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, i as u16 + 1));
            b.failed(ip, t0);
        }
        let other_host = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 9, 9, 9, 9));
        assert!(b.blocked(other_host, t0).is_some());
        let other_net = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert!(b.blocked(other_net, t0).is_none());
    }

    #[test]
    fn memory_is_bounded_and_many_addresses_share_one_backoff() {
        let b = Backoff::with_capacity(100);
        let t0 = Instant::now();
        b.succeeded(v4(7));
        for n in 1000..1100 {
            b.failed(v4(n), t0);
        }
        // The table is full: every further address counts against the shared backoff.
        for n in 5000..(5000 + FREE_FAILURES + 1) {
            b.failed(v4(n), t0);
        }
        assert!(b.lock().entries.len() <= 100);
        assert!(
            b.blocked(v4(9999), t0).is_some(),
            "a new address shares the block"
        );
        assert!(
            b.blocked(v4(1000), t0).is_none(),
            "tracked addresses keep their own"
        );
        assert!(
            b.blocked(v4(7), t0).is_none(),
            "an address that signed in keeps its own"
        );
        for n in 0..100_000 {
            b.failed(v4(n), t0);
        }
        // Only addresses that signed in may go beyond the capacity.
        assert!(b.lock().entries.len() <= 100 + TRUSTED);
    }
}
