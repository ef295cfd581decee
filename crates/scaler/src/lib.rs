//! The autoscaler: every `interval` it reads each function's load from the provider, turns it
//! into a replica count with the function's `com.openfaas.scale.*` policy
//! (desired = ceil(load / (target × target-proportion)), clamped to min..max) and applies it.
//! Scale-up is immediate; scale-down takes the highest recommendation of the last
//! `scale_down_window`, so replicas do not flap; a count raised by someone else (a manual
//! scale, an AlertManager alert) counts as such a recommendation, so it holds for the window. A function with `scale.zero=true` that saw no
//! request for `zero-duration` goes to zero; it comes back when a request arrives (the
//! provider holds that request until an instance is ready). Functions at zero are left alone.
//!
//! Time is injected ([`Clock`]) and the provider is reached through [`Fleet`], so the policy
//! is tested without processes or sleeping.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use virga_provider::{FunctionLoad, SharedProvider};
use virga_types::ScaleType;

/// A source of the current time.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// What the autoscaler reads load from and applies replica counts to.
pub trait Fleet: Send + Sync {
    /// The load of every function.
    fn loads(&self) -> Vec<FunctionLoad>;
    /// Set a running function's wanted replicas.
    fn set_replicas(&self, name: &str, replicas: u64);
    /// Go to zero unless a request arrived since `arrivals`; true if it did go.
    fn scale_to_zero(&self, name: &str, arrivals: u64) -> bool;
}

/// The most replicas a function (by key) may have, given how many the autoscaler wants:
/// where namespace quotas hold the autoscaler back.
pub type Cap = std::sync::Arc<dyn Fn(&str, u64) -> u64 + Send + Sync>;

/// The fleet of a provider: the provider seam's load and replica calls, within a cap.
struct ProviderFleet(SharedProvider, Cap);

impl Fleet for ProviderFleet {
    fn loads(&self) -> Vec<FunctionLoad> {
        self.0.loads()
    }
    fn set_replicas(&self, name: &str, replicas: u64) {
        self.0.autoscale(name, (self.1)(name, replicas));
    }
    fn scale_to_zero(&self, name: &str, arrivals: u64) -> bool {
        self.0.scale_idle_to_zero(name, arrivals)
    }
}

/// Settings of the autoscaler.
#[derive(Debug, Clone)]
pub struct ScalerConfig {
    /// How often load is read and replicas decided.
    pub interval: Duration,
    /// Load is averaged over this window (rps and CPU are rates over it).
    pub load_window: Duration,
    /// Replicas are only removed when every recommendation of this window allows it.
    pub scale_down_window: Duration,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        ScalerConfig {
            interval: Duration::from_millis(250),
            load_window: Duration::from_secs(1),
            scale_down_window: Duration::from_secs(30),
        }
    }
}

/// One reading of a function's counters.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    inflight: u64,
    arrivals: u64,
    cpu: f64,
}

/// What the autoscaler remembers about one function.
#[derive(Debug, Default)]
struct Track {
    samples: VecDeque<Sample>,
    /// (when, recommended replicas) within the scale-down window.
    recs: VecDeque<(Instant, u64)>,
    last_active: Option<Instant>,
    last_arrivals: u64,
    /// The replicas as last seen or set here: a higher count seen later was set by someone
    /// else (a manual scale, an AlertManager alert) and is held like a scale-up of ours.
    last_desired: Option<u64>,
}

/// The autoscaling policy over a fleet; call [`Scaler::tick`] every interval.
pub struct Scaler<C: Clock = SystemClock> {
    cfg: ScalerConfig,
    clock: C,
    tracks: HashMap<String, Track>,
}

impl<C: Clock> Scaler<C> {
    /// An autoscaler with no history.
    pub fn new(cfg: ScalerConfig, clock: C) -> Self {
        Scaler {
            cfg,
            clock,
            tracks: HashMap::new(),
        }
    }

    /// Read the load once and apply the decisions.
    pub fn tick(&mut self, fleet: &dyn Fleet) {
        let now = self.clock.now();
        let loads = fleet.loads();
        self.tracks
            .retain(|name, _| loads.iter().any(|l| &l.name == name));
        for l in loads {
            let track = self.tracks.entry(l.name.clone()).or_default();
            decide(&self.cfg, track, &l, now, fleet);
        }
    }
}

fn decide(cfg: &ScalerConfig, t: &mut Track, l: &FunctionLoad, now: Instant, fleet: &dyn Fleet) {
    let active = l.inflight > 0 || l.arrivals != t.last_arrivals || t.last_active.is_none();
    t.last_arrivals = l.arrivals;
    if active {
        t.last_active = Some(now);
    }
    t.samples.push_back(Sample {
        at: now,
        inflight: l.inflight,
        arrivals: l.arrivals,
        cpu: l.cpu_seconds.unwrap_or(0.0),
    });
    while t
        .samples
        .front()
        .is_some_and(|s| now.duration_since(s.at) > cfg.load_window)
    {
        t.samples.pop_front();
    }
    if l.desired == 0 {
        // At zero: a request brings it back, not the autoscaler.
        t.recs.clear();
        return;
    }
    let idle_for = t
        .last_active
        .map_or(Duration::ZERO, |a| now.duration_since(a));
    if l.policy.zero
        && idle_for >= l.policy.zero_duration
        && fleet.scale_to_zero(&l.name, l.arrivals)
    {
        tracing::info!(function = %l.name, "idle for {idle_for:?}: scaled to zero");
        t.recs.clear();
        return;
    }
    let want = l.policy.desired(load(l.policy.kind, &t.samples));
    if t.last_desired.is_none_or(|d| l.desired > d) {
        t.recs.push_back((now, l.desired.min(l.policy.max)));
    }
    t.recs.push_back((now, want));
    while t
        .recs
        .front()
        .is_some_and(|(at, _)| now.duration_since(*at) > cfg.scale_down_window)
    {
        t.recs.pop_front();
    }
    let next = if want >= l.desired {
        want
    } else {
        // Down only as far as the highest recommendation of the window.
        t.recs.iter().map(|&(_, r)| r).max().unwrap_or(want)
    };
    if next != l.desired {
        tracing::info!(function = %l.name, from = l.desired, to = next, "autoscaling");
        fleet.set_replicas(&l.name, next);
    }
    t.last_desired = Some(next);
}

/// The load over the samples of the window, in the unit of `kind`.
fn load(kind: ScaleType, samples: &VecDeque<Sample>) -> f64 {
    let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
        return 0.0;
    };
    let secs = last.at.duration_since(first.at).as_secs_f64();
    match kind {
        ScaleType::Capacity => {
            samples.iter().map(|s| s.inflight as f64).sum::<f64>() / samples.len() as f64
        }
        ScaleType::Rps if secs > 0.0 => last.arrivals.saturating_sub(first.arrivals) as f64 / secs,
        ScaleType::Cpu if secs > 0.0 => (last.cpu - first.cpu).max(0.0) * 1000.0 / secs,
        _ => 0.0,
    }
}

/// Run the autoscaler over `provider` on the real clock until the runtime stops, never
/// setting more replicas than `cap` allows.
pub fn spawn(provider: SharedProvider, cfg: ScalerConfig, cap: Cap) -> tokio::task::JoinHandle<()> {
    let fleet = ProviderFleet(provider, cap);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(cfg.interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut scaler = Scaler::new(cfg, SystemClock);
        loop {
            every.tick().await;
            scaler.tick(&fleet);
        }
    })
}

#[cfg(test)]
mod tests;
