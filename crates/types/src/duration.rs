//! The platform's one duration syntax: Go's `time.ParseDuration` (`30s`, `1m30s`, `500ms`,
//! `1.5h`, units `ns us µs ms s m h`) plus a bare whole number meaning seconds, as the
//! OpenFaaS watchdogs read their timeouts. Negative durations are refused: nothing here
//! waits for a negative time.

use std::time::Duration;

/// Nanoseconds per unit, longest names first so `ms` is not read as `m` + `s`.
const UNITS: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Go's largest duration (int64 nanoseconds, about 292 years).
const MAX_NANOS: u128 = i64::MAX as u128;

/// Parse a duration, or say what is wrong with it.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = |why: &str| {
        format!(
            "{s:?} is not a duration ({why}): use e.g. 30s, 1m30s, 500ms, 1.5h or whole seconds"
        )
    };
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if let Ok(secs) = s.parse::<u64>() {
        return if u128::from(secs) * 1_000_000_000 > MAX_NANOS {
            Err(bad("too large"))
        } else {
            Ok(Duration::from_secs(secs))
        };
    }
    if s.starts_with('-') {
        return Err(bad("negative"));
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (int, tail) = rest.split_at(int_len);
        let (frac, tail) = match tail.strip_prefix('.') {
            Some(t) => t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len())),
            None => ("", tail),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad("a number is missing"));
        }
        let (unit, scale) = UNITS
            .iter()
            .filter(|(u, _)| tail.starts_with(u))
            .max_by_key(|(u, _)| u.len())
            .ok_or_else(|| bad("a unit is missing or unknown"))?;
        rest = &tail[unit.len()..];
        total = int
            .parse::<u128>()
            .ok()
            .or(int.is_empty().then_some(0))
            .and_then(|n| n.checked_mul(*scale))
            .and_then(|n| n.checked_add(fraction(frac, *scale)))
            .and_then(|n| total.checked_add(n))
            .filter(|n| *n <= MAX_NANOS)
            .ok_or_else(|| bad("too large"))?;
    }
    // Bounded by MAX_NANOS above, so it fits.
    Ok(Duration::from_nanos(total as u64))
}

/// `0.digits` of `scale` nanoseconds, truncated as Go does.
fn fraction(digits: &str, scale: u128) -> u128 {
    let mut value: u128 = 0;
    let mut unit = scale;
    for d in digits.bytes() {
        unit /= 10;
        if unit == 0 {
            break;
        }
        value += u128::from(d - b'0') * unit;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn go_durations_and_whole_seconds() {
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("1.s"), Duration::from_secs(1));
        assert_eq!(ok("250us"), Duration::from_micros(250));
        assert_eq!(ok("250µs"), Duration::from_micros(250));
        assert_eq!(ok("3ns"), Duration::from_nanos(3));
        assert_eq!(ok("1h2m3s4ms"), Duration::from_millis(3_723_004));
        assert_eq!(ok("1.000000001s"), Duration::from_nanos(1_000_000_001));
        assert_eq!(ok("+5s"), Duration::from_secs(5));
        assert_eq!(ok(" 7 "), Duration::from_secs(7));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("2562047h"), Duration::from_secs(2_562_047 * 3600));
    }

    #[test]
    fn refuses_what_go_and_the_watchdog_refuse() {
        for bad in [
            "",
            "banana",
            "10x",
            "-1s",
            "-3",
            "s",
            "1.5",
            ".",
            ".s",
            "1m30",
            "5 s",
            "1e3s",
            "2562048h",
            "99999999999999999999s",
            "9223372037s",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("30s"), "{bad}: {e}");
        }
    }
}
