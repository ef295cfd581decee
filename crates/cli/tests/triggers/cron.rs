//! The cron connector: `@every 1s` runs once per second (no run missed, none doubled),
//! removing the function stops it, the API and `virga triggers` show the schedule, bad
//! annotations are a 400 naming them, and two gateways sharing one JetStream queue run each
//! tick once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::DateTime;
use serde_json::json;
use virga_testkit::brokers::NatsServer;

use crate::support::{records, wait_records, Setup};

/// The distinct scheduled ticks recorded, in seconds since the epoch.
fn ticks(recs: &[crate::support::Rec]) -> Vec<i64> {
    recs.iter()
        .map(|r| {
            DateTime::parse_from_rfc3339(&r.scheduled)
                .unwrap()
                .timestamp()
        })
        .collect()
}

#[test]
fn every_second_runs_once_per_tick_and_stops_when_removed() {
    let s = Setup::start(&[]);
    let calls = s.deploy_recorder(
        "tick",
        json!({"topic": "cron-function", "schedule": "@every 1s"}),
    );
    let deployed = chrono::Utc::now();
    let rows = s.triggers();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["connector"], "cron");
    assert_eq!(rows[0]["schedule"], "@every 1s");
    assert!(rows[0]["nextRun"].is_string(), "{rows:?}");
    std::thread::sleep(Duration::from_millis(4_500));
    let cli = s.p.cli(&s.dir, &["triggers"]);
    assert!(cli.contains("tick") && cli.contains("@every 1s"), "{cli}");
    s.remove("tick");
    let removed = chrono::Utc::now();
    // A run queued just before the removal may still be delivered: wait for the queue.
    std::thread::sleep(Duration::from_millis(300));
    let recs = records(&calls);
    let t = ticks(&recs);
    // Every whole second strictly between deploy and removal ran exactly once.
    let want: Vec<i64> = (deployed.timestamp() + 1..=removed.timestamp() - 1).collect();
    let got: BTreeSet<i64> = t.iter().copied().collect();
    assert_eq!(got.len(), t.len(), "a tick ran twice: {t:?}");
    for w in &want {
        assert!(got.contains(w), "tick {w} missing: {t:?} (want {want:?})");
    }
    assert!(t.len() <= want.len() + 1, "{t:?} vs {want:?}");
    assert!(recs
        .iter()
        .all(|r| r.connector == "cron" && r.topic == "cron-function"));
    assert!(recs.iter().all(|r| r.ce_type == "virga.cron.message"));
    let n = recs.len();
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(
        records(&calls).len(),
        n,
        "runs after the function was removed"
    );
    assert!(s.triggers().is_empty());
}

#[test]
fn bad_trigger_annotations_are_400_naming_them() {
    let s = Setup::start(&[]);
    for (annotations, name) in [
        (
            json!({"topic": "cron-function", "schedule": "*/5 * *"}),
            "\"schedule\"",
        ),
        (
            json!({"topic": "cron-function", "schedule": "99 * * * *"}),
            "\"schedule\"",
        ),
        (json!({"topic": "cron-function"}), "\"schedule\""),
        (json!({"topic": "orders,has space"}), "\"topic\""),
        (json!({"topic": "a..b"}), "\"topic\""),
        (
            json!({"topic": "x", "virga.schedule.timezone": "Nowhere/Else"}),
            "\"virga.schedule.timezone\"",
        ),
    ] {
        let r = s.p.send_json(
            reqwest::Method::POST,
            "/system/functions",
            json!({"service": "bad", "image": "", "envProcess": "cat", "annotations": annotations}),
        );
        assert_eq!(r.status, 400, "{annotations}: {}", r.text);
        assert!(r.text.contains(name), "{annotations}: {}", r.text);
    }
    assert!(s
        .p
        .get_json("/system/functions")
        .as_array()
        .unwrap()
        .is_empty());
    // An update is checked the same way and leaves the function as it was.
    s.p.deploy_process("ok", "cat", json!({}));
    let r = s.p.send_json(
        reqwest::Method::PUT,
        "/system/functions",
        json!({"service": "ok", "image": "", "envProcess": "cat",
               "annotations": {"topic": "cron-function", "schedule": "@every never"}}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("\"schedule\""), "{}", r.text);
    assert!(s.triggers().is_empty());
}

#[test]
fn two_gateways_sharing_jetstream_run_each_tick_once() {
    let nats = NatsServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let calls = tmp.path().join("shared.calls");
    let args = ["--queue", nats.url.as_str()];
    let gateways: Vec<Setup> = (0..2).map(|_| Setup::start(&args)).collect();
    let annotations = json!({"topic": "cron-function", "schedule": "@every 1s"});
    for g in &gateways {
        // Both record into one file: each tick must appear once in all.
        g.deploy_with("shared", annotations.clone(), None, &calls);
    }
    let start = Instant::now();
    let recs = wait_records(&calls, 4, Duration::from_secs(10));
    assert!(recs.len() >= 4, "{recs:?} after {:?}", start.elapsed());
    std::thread::sleep(Duration::from_millis(2_000));
    for g in &gateways {
        g.remove("shared");
    }
    std::thread::sleep(Duration::from_millis(500));
    let t = ticks(&records(&calls));
    let distinct: BTreeSet<i64> = t.iter().copied().collect();
    assert_eq!(distinct.len(), t.len(), "a tick ran twice: {t:?}");
    assert!(t.len() >= 5, "{t:?}");
}
