//! The policy against a fake fleet on a manual clock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use virga_types::ScalingPolicy;

use super::*;

#[derive(Clone)]
struct ManualClock(Arc<Mutex<Instant>>);

impl ManualClock {
    fn advance(&self, d: Duration) {
        *self.0.lock().unwrap() += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }
}

struct FakeFleet(Mutex<FunctionLoad>);

impl FakeFleet {
    fn new(labels: &[(&str, &str)], desired: u64) -> FakeFleet {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        FakeFleet(Mutex::new(FunctionLoad {
            name: "f".into(),
            policy: ScalingPolicy::from_labels(Some(&labels)).unwrap(),
            desired,
            inflight: 0,
            arrivals: 0,
            cpu_seconds: None,
        }))
    }
    fn set(&self, inflight: u64, new_arrivals: u64) {
        let mut l = self.0.lock().unwrap();
        l.inflight = inflight;
        l.arrivals += new_arrivals;
    }
    fn desired(&self) -> u64 {
        self.0.lock().unwrap().desired
    }
}

impl Fleet for FakeFleet {
    fn loads(&self) -> Vec<FunctionLoad> {
        vec![self.0.lock().unwrap().clone()]
    }
    fn set_replicas(&self, _: &str, replicas: u64) {
        self.0.lock().unwrap().desired = replicas;
    }
    fn scale_to_zero(&self, _: &str, arrivals: u64) -> bool {
        let mut l = self.0.lock().unwrap();
        if l.arrivals != arrivals || l.inflight > 0 {
            return false;
        }
        l.desired = 0;
        true
    }
}

fn scaler() -> (Scaler<ManualClock>, ManualClock) {
    let clock = ManualClock(Arc::new(Mutex::new(Instant::now())));
    let cfg = ScalerConfig {
        interval: Duration::from_millis(250),
        load_window: Duration::from_secs(1),
        scale_down_window: Duration::from_secs(10),
    };
    (Scaler::new(cfg, clock.clone()), clock)
}

const CAPACITY_1: &[(&str, &str)] = &[
    ("com.openfaas.scale.type", "capacity"),
    ("com.openfaas.scale.target", "1"),
    ("com.openfaas.scale.target-proportion", "1"),
    ("com.openfaas.scale.max", "5"),
];

#[test]
fn a_load_step_scales_up_at_once_and_down_after_the_window() {
    let (mut s, clock) = scaler();
    let fleet = FakeFleet::new(CAPACITY_1, 1);
    s.tick(&fleet);
    assert_eq!(fleet.desired(), 1);
    fleet.set(4, 4);
    clock.advance(Duration::from_millis(250));
    s.tick(&fleet);
    // Averaged with the idle sample: ceil(2 / 1) = 2, rising as the window fills.
    assert_eq!(fleet.desired(), 2);
    for _ in 0..4 {
        clock.advance(Duration::from_millis(250));
        s.tick(&fleet);
    }
    assert_eq!(fleet.desired(), 4);
    fleet.set(0, 0);
    for _ in 0..20 {
        clock.advance(Duration::from_millis(250));
        s.tick(&fleet);
        assert_eq!(fleet.desired(), 4, "no scale-down inside the window");
    }
    for _ in 0..30 {
        clock.advance(Duration::from_millis(250));
        s.tick(&fleet);
    }
    assert_eq!(fleet.desired(), 1);
}

#[test]
fn replicas_stay_within_min_and_max() {
    let (mut s, clock) = scaler();
    let mut labels = CAPACITY_1.to_vec();
    labels.push(("com.openfaas.scale.min", "2"));
    let fleet = FakeFleet::new(&labels, 2);
    fleet.set(50, 50);
    for _ in 0..8 {
        clock.advance(Duration::from_millis(250));
        s.tick(&fleet);
    }
    assert_eq!(fleet.desired(), 5);
    fleet.set(0, 0);
    for _ in 0..200 {
        clock.advance(Duration::from_millis(250));
        s.tick(&fleet);
    }
    assert_eq!(fleet.desired(), 2);
}

#[test]
fn rps_is_a_rate_over_the_window() {
    let (mut s, clock) = scaler();
    let fleet = FakeFleet::new(
        &[
            ("com.openfaas.scale.target", "10"),
            ("com.openfaas.scale.target-proportion", "1"),
        ],
        1,
    );
    s.tick(&fleet);
    for _ in 0..4 {
        fleet.set(0, 10); // 40 rps
        clock.advance(Duration::from_millis(250));
        s.tick(&fleet);
    }
    assert_eq!(fleet.desired(), 4);
}

#[test]
fn idle_functions_go_to_zero_only_when_enabled() {
    for (zero, expect) in [("true", 0), ("false", 1)] {
        let (mut s, clock) = scaler();
        let fleet = FakeFleet::new(
            &[
                ("com.openfaas.scale.zero", zero),
                ("com.openfaas.scale.zero-duration", "2s"),
            ],
            1,
        );
        s.tick(&fleet);
        for _ in 0..4 {
            clock.advance(Duration::from_millis(250));
            fleet.set(0, 1);
            s.tick(&fleet);
        }
        // Activity keeps it up; 2 s of silence takes it down.
        assert_eq!(fleet.desired(), 1);
        for _ in 0..9 {
            clock.advance(Duration::from_millis(250));
            s.tick(&fleet);
        }
        assert_eq!(fleet.desired(), expect, "zero={zero}");
    }
}

#[test]
fn a_function_at_zero_is_left_for_requests_to_wake() {
    let (mut s, clock) = scaler();
    let fleet = FakeFleet::new(CAPACITY_1, 0);
    for _ in 0..10 {
        clock.advance(Duration::from_millis(250));
        s.tick(&fleet);
    }
    assert_eq!(fleet.desired(), 0);
}

#[test]
fn replicas_raised_from_outside_hold_for_the_scale_down_window() {
    let (mut s, clock) = scaler();
    let fleet = FakeFleet::new(CAPACITY_1, 1);
    s.tick(&fleet);
    assert_eq!(fleet.desired(), 1);
    // An alert or a manual scale raises it to 4 with no load behind it.
    fleet.set_replicas("f", 4);
    for _ in 0..30 {
        clock.advance(Duration::from_millis(250));
        s.tick(&fleet);
        assert_eq!(fleet.desired(), 4);
    }
    clock.advance(Duration::from_secs(4));
    s.tick(&fleet);
    assert_eq!(fleet.desired(), 1);
}
