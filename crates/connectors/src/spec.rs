//! A function's triggers as its annotations declare them, OpenFaaS's names unchanged:
//! `topic` (comma-separated) subscribes it on every enabled broker; `topic: cron-function`
//! with `schedule` schedules it. Virga's own: `virga.schedule.timezone` (UTC by default),
//! `virga.reply-topic` (where answers go), `virga.nats.stream` (consume the topics from this
//! JetStream stream, acked once queued, instead of NATS core).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// The annotation naming the topics (OpenFaaS's).
pub const ANN_TOPIC: &str = "topic";
/// The annotation with the cron schedule (OpenFaaS's cron-connector).
pub const ANN_SCHEDULE: &str = "schedule";
/// The `topic` that marks a scheduled function (OpenFaaS's cron-connector).
pub const CRON_TOPIC: &str = "cron-function";
/// The time zone the schedule is read in (an IANA name; UTC by default).
pub const ANN_TIMEZONE: &str = "virga.schedule.timezone";
/// The topic a function's answers are published to (besides a message's reply subject).
pub const ANN_REPLY_TOPIC: &str = "virga.reply-topic";
/// The JetStream stream the function's NATS topics are consumed from.
pub const ANN_NATS_STREAM: &str = "virga.nats.stream";

/// The longest topic accepted.
const MAX_TOPIC: usize = 256;

/// An annotation that cannot be used, with what to do (a 400 at deploy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation:?}: {why}")]
pub struct SpecError {
    /// The annotation's name.
    pub annotation: &'static str,
    /// What is wrong and how to fix it.
    pub why: String,
}

fn bad(annotation: &'static str, why: impl Into<String>) -> SpecError {
    SpecError {
        annotation,
        why: why.into(),
    }
}

/// When a scheduled function runs.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron expression (5 fields or an `@hourly`-style descriptor) in a time zone.
    Cron {
        /// The parsed expression.
        cron: Box<croner::Cron>,
        /// The zone it is read in.
        tz: Tz,
    },
    /// `@every DURATION`: at every multiple of the period since the Unix epoch, so two
    /// gateways agree on the ticks.
    Every(Duration),
}

impl Schedule {
    /// The first run strictly after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(period) => {
                let p = period.as_millis().max(1) as i64;
                let next = (now.timestamp_millis().div_euclid(p) + 1) * p;
                Utc.timestamp_millis_opt(next).single()
            }
            Schedule::Cron { cron, tz } => cron
                .find_next_occurrence(&now.with_timezone(tz), false)
                .ok()
                .map(|t| t.with_timezone(&Utc)),
        }
    }

    fn parse(text: &str, tz: Tz) -> Result<Schedule, SpecError> {
        let text = text.trim();
        if let Some(d) = text.strip_prefix("@every") {
            let d = virga_types::duration::parse(d.trim())
                .map_err(|e| bad(ANN_SCHEDULE, format!("@every: {e}")))?;
            if d < Duration::from_millis(100) {
                return Err(bad(ANN_SCHEDULE, "@every needs a period of at least 100ms"));
            }
            return Ok(Schedule::Every(d));
        }
        let fields = text.split_whitespace().count();
        if !text.starts_with('@') && fields != 5 {
            return Err(bad(
                ANN_SCHEDULE,
                format!(
                    "{text:?} has {fields} fields: use 5 (minute hour day-of-month month \
                     day-of-week, e.g. \"*/5 * * * *\"), @hourly-style or @every 30s"
                ),
            ));
        }
        let cron = croner::Cron::new(text).parse().map_err(|e| {
            bad(
                ANN_SCHEDULE,
                format!("{text:?} is not a cron schedule ({e}): e.g. \"*/5 * * * *\", @hourly or @every 30s"),
            )
        })?;
        Ok(Schedule::Cron {
            cron: Box::new(cron),
            tz,
        })
    }
}

/// A function's triggers.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Broker topics (NATS subjects, MQTT topic filters).
    pub topics: Vec<String>,
    /// The schedule, for `topic: cron-function`.
    pub schedule: Option<(String, Schedule)>,
    /// Where answers are published, if anywhere besides a reply subject.
    pub reply_topic: Option<String>,
    /// The JetStream stream the NATS topics come from (NATS core when `None`).
    pub stream: Option<String>,
}

impl Spec {
    /// The triggers `annotations` declare (`None` when there are none), or the first
    /// annotation that is wrong.
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<Option<Spec>, SpecError> {
        let get = |k: &str| annotations.and_then(|a| a.get(k)).map(String::as_str);
        let Some(topic) = get(ANN_TOPIC) else {
            for k in [ANN_SCHEDULE, ANN_REPLY_TOPIC, ANN_NATS_STREAM] {
                if get(k).is_some() {
                    return Err(bad(static_name(k), "needs a \"topic\" annotation too"));
                }
            }
            return Ok(None);
        };
        let mut topics = Vec::new();
        let mut cron = false;
        for t in topic.split(',').map(str::trim) {
            if t == CRON_TOPIC {
                cron = true;
            } else {
                check_topic(ANN_TOPIC, t)?;
                if !topics.iter().any(|x| x == t) {
                    topics.push(t.to_string());
                }
            }
        }
        let tz = match get(ANN_TIMEZONE) {
            None => Tz::UTC,
            Some(z) => z.trim().parse().map_err(|_| {
                bad(
                    ANN_TIMEZONE,
                    format!("{z:?} is not an IANA time zone: e.g. UTC or Europe/Paris"),
                )
            })?,
        };
        let schedule = match (cron, get(ANN_SCHEDULE)) {
            (true, Some(s)) => Some((s.trim().to_string(), Schedule::parse(s, tz)?)),
            (true, None) => {
                return Err(bad(
                    ANN_SCHEDULE,
                    "missing: \"topic: cron-function\" needs a schedule, e.g. \"*/5 * * * *\"",
                ))
            }
            (false, Some(_)) => {
                return Err(bad(
                    ANN_TOPIC,
                    "a schedule needs \"cron-function\" among the topics",
                ))
            }
            (false, None) => None,
        };
        let reply_topic = get(ANN_REPLY_TOPIC).map(str::trim).map(str::to_string);
        if let Some(r) = &reply_topic {
            check_topic(ANN_REPLY_TOPIC, r)?;
            if r.contains(['*', '>', '+', '#']) {
                return Err(bad(ANN_REPLY_TOPIC, "a reply topic cannot hold wildcards"));
            }
        }
        let stream = get(ANN_NATS_STREAM).map(str::trim).map(str::to_string);
        if let Some(s) = &stream {
            if s.is_empty() || s.len() > 64 || !s.bytes().all(stream_char) {
                return Err(bad(
                    ANN_NATS_STREAM,
                    format!("{s:?} is not a stream name (letters, digits, - and _, at most 64)"),
                ));
            }
        }
        Ok(Some(Spec {
            topics,
            schedule,
            reply_topic,
            stream,
        }))
    }
}

fn stream_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn static_name(k: &str) -> &'static str {
    [ANN_SCHEDULE, ANN_REPLY_TOPIC, ANN_NATS_STREAM, ANN_TOPIC]
        .into_iter()
        .find(|s| *s == k)
        .unwrap_or(ANN_TOPIC)
}

/// A topic both NATS (subject tokens, `*` and `>` wildcards) and MQTT (`+` and `#` levels)
/// accept as a subscription.
fn check_topic(annotation: &'static str, t: &str) -> Result<(), SpecError> {
    let fail = |why: &str| Err(bad(annotation, format!("topic {t:?} {why}")));
    if t.is_empty() {
        return fail("is empty (topics are comma-separated, e.g. \"orders,payments\")");
    }
    if t.len() > MAX_TOPIC {
        return fail(&format!("is longer than {MAX_TOPIC} bytes"));
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return fail("holds a space or a control character, which brokers refuse");
    }
    if t.starts_with('$') {
        return fail("starts with $, which brokers keep for themselves");
    }
    let tokens: Vec<&str> = t.split('.').collect();
    if tokens.iter().any(|s| s.is_empty()) {
        return fail("has an empty NATS token (a leading, trailing or doubled '.')");
    }
    let last = tokens.len() - 1;
    for (i, tok) in tokens.iter().enumerate() {
        if tok.contains(['*', '>']) && tok.len() > 1 || (*tok == ">" && i != last) {
            return fail("uses * or > other than as a whole token (> only at the end)");
        }
    }
    let levels: Vec<&str> = t.split('/').collect();
    let last = levels.len() - 1;
    for (i, l) in levels.iter().enumerate() {
        if l.contains(['+', '#']) && l.len() > 1 || (*l == "#" && i != last) {
            return fail("uses + or # other than as a whole level (# only at the end)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pairs: &[(&str, &str)]) -> Result<Option<Spec>, SpecError> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Spec::from_annotations(Some(&m))
    }

    #[test]
    fn openfaas_annotations_parse() {
        let s = spec(&[("topic", "orders, payments,orders")])
            .unwrap()
            .unwrap();
        assert_eq!(s.topics, ["orders", "payments"]);
        assert!(s.schedule.is_none());
        let s = spec(&[("topic", "cron-function"), ("schedule", "*/5 * * * *")])
            .unwrap()
            .unwrap();
        assert!(s.topics.is_empty());
        let (_, sch) = s.schedule.unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 10, 2, 0).unwrap();
        let next = Utc.with_ymd_and_hms(2026, 1, 1, 10, 5, 0).unwrap();
        assert_eq!(sch.next_after(now), Some(next));
        assert!(spec(&[]).unwrap().is_none());
    }

    #[test]
    fn descriptors_every_and_time_zones() {
        let hourly = spec(&[("topic", "cron-function"), ("schedule", "@hourly")]).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 10, 2, 0).unwrap();
        let (_, s) = hourly.unwrap().schedule.unwrap();
        assert_eq!(
            s.next_after(now),
            Some(Utc.with_ymd_and_hms(2026, 1, 1, 11, 0, 0).unwrap())
        );
        let every = spec(&[("topic", "cron-function"), ("schedule", "@every 1s")]).unwrap();
        let (_, s) = every.unwrap().schedule.unwrap();
        let t = Utc.timestamp_millis_opt(1_500).unwrap();
        assert_eq!(s.next_after(t).unwrap().timestamp_millis(), 2_000);
        let paris = spec(&[
            ("topic", "cron-function"),
            ("schedule", "0 9 * * *"),
            (ANN_TIMEZONE, "Europe/Paris"),
        ])
        .unwrap();
        let (_, s) = paris.unwrap().schedule.unwrap();
        assert_eq!(
            s.next_after(now),
            Some(Utc.with_ymd_and_hms(2026, 1, 2, 8, 0, 0).unwrap())
        );
    }

    #[test]
    fn bad_annotations_are_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("topic", "cron-function"), ("schedule", "61 * * * *")],
                "schedule",
            ),
            (
                &[("topic", "cron-function"), ("schedule", "* * *")],
                "schedule",
            ),
            (
                &[("topic", "cron-function"), ("schedule", "@every soon")],
                "schedule",
            ),
            (&[("topic", "cron-function")], "schedule"),
            (&[("topic", "a,")], "topic"),
            (&[("topic", "has space")], "topic"),
            (&[("topic", "a..b")], "topic"),
            (&[("topic", "a/#/b")], "topic"),
            (
                &[("topic", "x"), (ANN_TIMEZONE, "Mars/Olympus")],
                ANN_TIMEZONE,
            ),
            (&[("schedule", "@hourly")], "schedule"),
            (&[("topic", "x"), (ANN_NATS_STREAM, "a.b")], ANN_NATS_STREAM),
            (
                &[("topic", "x"), (ANN_REPLY_TOPIC, "out.*")],
                ANN_REPLY_TOPIC,
            ),
        ];
        for (pairs, name) in cases {
            let e = spec(pairs).unwrap_err();
            assert_eq!(e.annotation, *name, "{pairs:?}: {e}");
        }
        assert!(spec(&[("topic", "sensors/+/temp,orders.*,a.>")]).is_ok());
    }
}
