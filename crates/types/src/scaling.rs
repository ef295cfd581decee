//! The `com.openfaas.scale.*` labels, parsed into a [`ScalingPolicy`]: replica bounds, the
//! load metric and its per-replica target, and whether (and after how long idle) a function
//! may go to zero instances. Every bad value is reported with the label that carries it.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{duration, Invalid};

/// The most replicas any function may have: every replica is a process on this machine, and
/// a count the machine cannot hold would only make the provider spin creating instances.
pub const MAX_REPLICAS: u64 = 1000;

/// Minimum replicas while the function is active (and the count it is deployed with).
pub const LABEL_MIN: &str = "com.openfaas.scale.min";
/// Maximum replicas the autoscaler may start.
pub const LABEL_MAX: &str = "com.openfaas.scale.max";
/// Load one replica is meant to carry.
pub const LABEL_TARGET: &str = "com.openfaas.scale.target";
/// What load means: `rps`, `capacity` (in-flight requests) or `cpu` (millicores).
pub const LABEL_TYPE: &str = "com.openfaas.scale.type";
/// Fraction of the target at which a replica counts as full.
pub const LABEL_PROPORTION: &str = "com.openfaas.scale.target-proportion";
/// Whether the function goes to zero instances when idle.
pub const LABEL_ZERO: &str = "com.openfaas.scale.zero";
/// How long without requests before going to zero, e.g. `15m`, `30s`.
pub const LABEL_ZERO_DURATION: &str = "com.openfaas.scale.zero-duration";
/// Percent of the maximum replicas a firing AlertManager alert adds (`/system/alert`).
pub const LABEL_FACTOR: &str = "com.openfaas.scale.factor";

/// The load metric a function scales on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleType {
    /// Requests per second.
    Rps,
    /// Requests in flight (including those waiting for an instance).
    Capacity,
    /// CPU used by the instances, in millicores.
    Cpu,
}

/// How one function scales, from its labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalingPolicy {
    /// Lowest replica count while active.
    pub min: u64,
    /// Highest replica count.
    pub max: u64,
    /// Load per replica.
    pub target: u64,
    /// The load metric.
    pub kind: ScaleType,
    /// Fraction of `target` a replica is filled to before another is added.
    pub target_proportion: f64,
    /// Whether idleness scales to zero.
    pub zero: bool,
    /// Idle time before scaling to zero.
    pub zero_duration: Duration,
    /// Percent of `max` one firing alert adds (0 to 100).
    pub factor: u64,
}

impl Default for ScalingPolicy {
    fn default() -> Self {
        ScalingPolicy {
            min: 1,
            max: 20,
            target: 50,
            kind: ScaleType::Rps,
            target_proportion: 0.9,
            zero: false,
            zero_duration: Duration::from_secs(15 * 60),
            factor: 20,
        }
    }
}

fn bad(label: &str, value: &str, what: &str) -> Invalid {
    Invalid {
        field: format!("labels: {label}"),
        reason: format!("{value:?} is not valid: {what}"),
    }
}

impl ScalingPolicy {
    /// The replicas after an AlertManager alert with `status` (OpenFaaS's rule): a firing
    /// alert adds `factor`% of `max` (rounded up) to `current`, up to `max`; anything else
    /// (resolved), and a firing alert that would add nothing, goes back to `min`.
    pub fn after_alert(&self, firing: bool, current: u64) -> u64 {
        let step = (self.max * self.factor).div_ceil(100);
        if firing && step > 0 {
            (current + step).min(self.max)
        } else {
            self.min
        }
    }

    /// The policy of stored labels: parsed, with replica bounds clamped to [`MAX_REPLICAS`]
    /// (a database from before the cap may hold larger ones).
    pub fn from_labels(labels: Option<&BTreeMap<String, String>>) -> Result<Self, Invalid> {
        let mut p = Self::parse(labels)?;
        p.max = p.max.min(MAX_REPLICAS);
        p.min = p.min.min(p.max);
        Ok(p)
    }

    /// Check the labels of a new deployment: valid, and replica bounds within [`MAX_REPLICAS`].
    pub fn check_labels(labels: Option<&BTreeMap<String, String>>) -> Result<(), Invalid> {
        let p = Self::parse(labels)?;
        for (label, n) in [(LABEL_MIN, p.min), (LABEL_MAX, p.max)] {
            if n > MAX_REPLICAS {
                return Err(bad(
                    label,
                    &n.to_string(),
                    &format!("more than the platform's limit of {MAX_REPLICAS} replicas"),
                ));
            }
        }
        Ok(())
    }

    /// Parse the scaling labels as given (absent ones take OpenFaaS's defaults).
    fn parse(labels: Option<&BTreeMap<String, String>>) -> Result<Self, Invalid> {
        let mut p = ScalingPolicy::default();
        let Some(labels) = labels else {
            return Ok(p);
        };
        let get = |k: &str| labels.get(k).map(|v| v.trim());
        let whole = |k: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| bad(k, v, "give a whole number"))
        };
        if let Some(v) = get(LABEL_MIN) {
            p.min = whole(LABEL_MIN, v)?;
        }
        if let Some(v) = get(LABEL_MAX) {
            p.max = whole(LABEL_MAX, v)?;
            if p.max == 0 {
                return Err(bad(LABEL_MAX, v, "must be at least 1"));
            }
        }
        if p.min > p.max {
            return Err(bad(
                LABEL_MIN,
                &p.min.to_string(),
                &format!("larger than {LABEL_MAX} ({})", p.max),
            ));
        }
        if let Some(v) = get(LABEL_TARGET) {
            p.target = whole(LABEL_TARGET, v)?;
            if p.target == 0 {
                return Err(bad(LABEL_TARGET, v, "must be at least 1"));
            }
        }
        if let Some(v) = get(LABEL_TYPE) {
            p.kind = match v {
                "rps" => ScaleType::Rps,
                "capacity" => ScaleType::Capacity,
                "cpu" => ScaleType::Cpu,
                _ => return Err(bad(LABEL_TYPE, v, "use rps, capacity or cpu")),
            };
        }
        if let Some(v) = get(LABEL_PROPORTION) {
            p.target_proportion = v
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f > 0.0 && *f <= 1.0)
                .ok_or_else(|| bad(LABEL_PROPORTION, v, "give a number above 0 and at most 1"))?;
        }
        if let Some(v) = get(LABEL_ZERO) {
            p.zero = match v {
                "true" => true,
                "false" => false,
                _ => return Err(bad(LABEL_ZERO, v, "use true or false")),
            };
        }
        if let Some(v) = get(LABEL_FACTOR) {
            p.factor = whole(LABEL_FACTOR, v)?;
            if p.factor > 100 {
                return Err(bad(LABEL_FACTOR, v, "give a percentage from 0 to 100"));
            }
        }
        if let Some(v) = get(LABEL_ZERO_DURATION) {
            p.zero_duration = duration::parse(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    bad(
                        LABEL_ZERO_DURATION,
                        v,
                        "give a duration like 15m, 30s or 500ms",
                    )
                })?;
        }
        Ok(p)
    }

    /// Replicas wanted for `load`: ceil(load / (target × proportion)), within min..max
    /// (never below 1: only idleness takes a function to zero).
    pub fn desired(&self, load: f64) -> u64 {
        let per_replica = self.target as f64 * self.target_proportion;
        let raw = if load.is_finite() && load > 0.0 {
            (load / per_replica).ceil().min(u64::MAX as f64) as u64
        } else {
            0
        };
        raw.clamp(self.min.max(1), self.max.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_openfaas() {
        let p = ScalingPolicy::from_labels(None).unwrap();
        assert_eq!((p.min, p.max, p.target), (1, 20, 50));
        assert_eq!(p.kind, ScaleType::Rps);
        assert!(!p.zero);
        assert_eq!(p.zero_duration, Duration::from_secs(900));
    }

    #[test]
    fn alerts_step_by_the_factor_of_max() {
        let p = ScalingPolicy::from_labels(Some(&labels(&[(LABEL_MIN, "2"), (LABEL_MAX, "12")])))
            .unwrap();
        assert_eq!(p.factor, 20);
        // 20% of 12 is 2.4: steps of 3, capped at max; resolved goes back to min.
        assert_eq!(p.after_alert(true, 2), 5);
        assert_eq!(p.after_alert(true, 11), 12);
        assert_eq!(p.after_alert(false, 9), 2);
        let all = ScalingPolicy::from_labels(Some(&labels(&[(LABEL_FACTOR, "100")]))).unwrap();
        assert_eq!(all.after_alert(true, 1), 20);
        let off = ScalingPolicy::from_labels(Some(&labels(&[(LABEL_FACTOR, "0")]))).unwrap();
        assert_eq!(off.after_alert(true, 4), 1);
        for bad in ["101", "-1", "x"] {
            assert!(ScalingPolicy::from_labels(Some(&labels(&[(LABEL_FACTOR, bad)]))).is_err());
        }
    }

    #[test]
    fn parses_every_label() {
        let l = labels(&[
            (LABEL_MIN, "2"),
            (LABEL_MAX, "5"),
            (LABEL_TARGET, "1"),
            (LABEL_TYPE, "capacity"),
            (LABEL_PROPORTION, "0.5"),
            (LABEL_ZERO, "true"),
            (LABEL_ZERO_DURATION, "1m30s"),
        ]);
        let p = ScalingPolicy::from_labels(Some(&l)).unwrap();
        assert_eq!((p.min, p.max, p.target), (2, 5, 1));
        assert_eq!(p.kind, ScaleType::Capacity);
        assert_eq!(p.target_proportion, 0.5);
        assert!(p.zero);
        assert_eq!(p.zero_duration, Duration::from_secs(90));
    }

    #[test]
    fn bad_values_name_their_label() {
        for (k, v) in [
            (LABEL_MIN, "lots"),
            (LABEL_MAX, "0"),
            (LABEL_TARGET, "-1"),
            (LABEL_TYPE, "memory"),
            (LABEL_PROPORTION, "1.5"),
            (LABEL_ZERO, "yes"),
            (LABEL_ZERO_DURATION, "soon"),
        ] {
            let e = ScalingPolicy::from_labels(Some(&labels(&[(k, v)]))).unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
        }
        let e = ScalingPolicy::from_labels(Some(&labels(&[(LABEL_MIN, "5"), (LABEL_MAX, "2")])))
            .unwrap_err();
        assert!(e.to_string().contains(LABEL_MIN), "{e}");
    }

    #[test]
    fn desired_is_ceil_of_load_over_effective_target() {
        let p = ScalingPolicy {
            target: 10,
            target_proportion: 0.5,
            max: 4,
            ..ScalingPolicy::default()
        };
        assert_eq!(p.desired(0.0), 1);
        assert_eq!(p.desired(5.0), 1);
        assert_eq!(p.desired(5.1), 2);
        assert_eq!(p.desired(100.0), 4);
    }

    #[test]
    fn replica_bounds_beyond_the_cap_are_refused_new_and_clamped_stored() {
        let huge = "18446744073709551615";
        for k in [LABEL_MIN, LABEL_MAX] {
            let l = labels(&[(LABEL_MIN, "1"), (k, huge)]);
            let e = ScalingPolicy::check_labels(Some(&l)).unwrap_err();
            assert!(e.to_string().contains(k), "{e}");
        }
        let l = labels(&[(LABEL_MIN, huge), (LABEL_MAX, huge)]);
        let p = ScalingPolicy::from_labels(Some(&l)).unwrap();
        assert_eq!((p.min, p.max), (MAX_REPLICAS, MAX_REPLICAS));
        let l = labels(&[(LABEL_MAX, &MAX_REPLICAS.to_string())]);
        ScalingPolicy::check_labels(Some(&l)).unwrap();
    }
}
