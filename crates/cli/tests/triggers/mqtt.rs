//! The MQTT connector against a real mosquitto, published to with `mosquitto_pub` (QoS 1):
//! one invocation per message with its headers, removal followed at once, 10,000 messages at
//! once with a small queue cap (all delivered, the queue never over its cap: the rest waits
//! in the broker), a kill -9 of `virga up` while messages arrive (none lost: PUBACK only
//! once queued, a persistent session), and a broker restart mid-stream.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use virga_testkit::brokers::Mosquitto;

use crate::support::{outage, real, records, wait_real, wait_subscribed, Setup};

fn start(broker: &Mosquitto, extra: &[&str]) -> Setup {
    let mut args = vec!["--mqtt-url", broker.url.as_str()];
    args.extend_from_slice(extra);
    Setup::start(&args)
}

fn distinct_bodies(calls: &std::path::Path) -> BTreeSet<String> {
    real(&records(calls)).into_iter().map(|r| r.body).collect()
}

#[test]
fn qos1_messages_invoke_once_each_until_removed() {
    let broker = Mosquitto::start();
    let s = start(&broker, &[]);
    let calls = s.deploy_recorder("temp", json!({"topic": "sensors/+/temp"}));
    wait_subscribed(&calls, |b| broker.publish("sensors/probe/temp", b));
    let lines: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    broker.publish_lines("sensors/kitchen/temp", &lines);
    let recs = wait_real(&calls, 10, Duration::from_secs(20));
    let mut bodies: Vec<String> = recs.iter().map(|r| r.body.clone()).collect();
    bodies.sort();
    assert_eq!(bodies, lines);
    for r in &recs {
        assert_eq!(r.topic, "sensors/kitchen/temp");
        assert_eq!(r.connector, "mqtt");
        assert_eq!(r.ce_type, "virga.mqtt.message");
        assert!(!r.message_id.is_empty(), "{r:?}");
    }
    let rows = s.triggers();
    assert!(rows.iter().any(|r| r["connector"] == "mqtt"
        && r["topic"] == "sensors/+/temp"
        && r["enabled"] == true
        && r["lastRun"].is_string()));
    s.remove("temp");
    let before = records(&calls).len();
    broker.publish("sensors/kitchen/temp", "late");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        records(&calls).len(),
        before,
        "a removed function was invoked"
    );
}

/// VmHWM (peak resident memory) of process `pid`, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn ten_thousand_messages_at_once_are_all_delivered_with_bounded_memory() {
    let broker = Mosquitto::start();
    let cap = 200;
    let s = start(
        &broker,
        &["--async-max-depth-per-function", &cap.to_string()],
    );
    let calls = s.deploy_recorder("bulk", json!({"topic": "bulk"}));
    wait_subscribed(&calls, |b| broker.publish("bulk", b));
    let before = peak_kib(s.p.pid().unwrap());
    // 10,000 messages of 1 KiB: 10 MiB that must not all sit in Virga's memory at once.
    let pad = "x".repeat(1000);
    let lines: Vec<String> = (0..10_000).map(|i| format!("m{i:05}-{pad}")).collect();
    let publisher = {
        let lines = lines.clone();
        let port = broker.port;
        std::thread::spawn(move || {
            let b = Mosquitto::publisher(port);
            b.publish_lines("bulk", &lines);
        })
    };
    let started = Instant::now();
    let mut deepest = 0;
    while distinct_bodies(&calls).len() < lines.len() {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "not all delivered"
        );
        let q = s.p.get_json("/system/virga/queues");
        for queue in q["queues"].as_array().unwrap() {
            deepest = deepest.max(queue["depth"].as_u64().unwrap());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    publisher.join().unwrap();
    let took = started.elapsed();
    let got = distinct_bodies(&calls);
    let want: BTreeSet<String> = lines.iter().cloned().collect();
    assert_eq!(got, want);
    assert!(deepest <= cap, "queue depth {deepest} over its cap {cap}");
    let grew = peak_kib(s.p.pid().unwrap()).saturating_sub(before);
    eprintln!(
        "10,000 MQTT messages in {took:?}; deepest queue {deepest}; peak RSS grew {grew} KiB"
    );
    assert!(grew < 64 * 1024, "peak memory grew {grew} KiB");
}

#[test]
fn kill9_while_qos1_messages_arrive_loses_none() {
    kill9_loses_none(&[]);
}

#[test]
fn kill9_while_mqtt5_messages_arrive_loses_none() {
    kill9_loses_none(&["--mqtt-version", "5"]);
}

fn kill9_loses_none(extra: &[&str]) {
    let broker = Mosquitto::start();
    let mut s = start(&broker, extra);
    let calls = s.deploy_recorder("k9", json!({"topic": "k9"}));
    wait_subscribed(&calls, |b| broker.publish("k9", b));
    let total = 600;
    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        let b = Mosquitto::publisher(port);
        for chunk in 0..30 {
            let lines: Vec<String> = (0..total / 30)
                .map(|i| format!("k{chunk:02}-{i:02}"))
                .collect();
            b.publish_lines("k9", &lines);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    // Kill in the middle of the stream, once some have gone through.
    let deadline = Instant::now() + Duration::from_secs(20);
    while distinct_bodies(&calls).len() < 100 {
        assert!(Instant::now() < deadline, "nothing arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    s.p.kill9();
    let at_kill = distinct_bodies(&calls).len();
    std::thread::sleep(Duration::from_millis(300));
    s.p.restart();
    publisher.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while distinct_bodies(&calls).len() < total {
        assert!(
            Instant::now() < deadline,
            "lost: {} of {total}",
            distinct_bodies(&calls).len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let all = real(&records(&calls)).len();
    eprintln!(
        "kill -9 after {at_kill} of {total}: all {total} delivered, {} twice",
        all - total
    );
    assert!(at_kill < total, "the kill came after the stream");
}

#[test]
fn a_broker_restart_mid_stream_is_survived() {
    let mut broker = Mosquitto::start();
    let s = start(&broker, &[]);
    let calls = s.deploy_recorder("steady", json!({"topic": "steady"}));
    wait_subscribed(&calls, |b| broker.publish("steady", b));
    let first: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
    broker.publish_lines("steady", &first);
    assert_eq!(wait_real(&calls, 20, Duration::from_secs(20)).len(), 20);
    outage(&s, "mqtt", Duration::from_secs(20), |down| match down {
        true => broker.stop(),
        false => broker.restart(),
    });
    let second: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
    broker.publish_lines("steady", &second);
    let got = |p: &str| {
        distinct_bodies(&calls)
            .iter()
            .filter(|b| b.starts_with(p))
            .count()
    };
    assert!(s.p.eventually(Duration::from_secs(20), || got("b") == 20));
    assert_eq!(got("a"), 20);
    let log = s.stderr();
    assert!(log.contains("mqtt connector: lost"), "{log}");
}

/// One `mosquitto_sub` run of the persistent session `id` on `topic`: subscribes, takes at
/// most one message (waiting up to 20 s), and leaves the session to keep the rest.
fn take_one(broker: &Mosquitto, id: &str, topic: &str, subscribe_only: bool) -> String {
    let port = broker.port.to_string();
    let mut cmd = std::process::Command::new("mosquitto_sub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-c",
        "-i",
        id,
        "-q",
        "1",
        "-t",
        topic,
    ]);
    if subscribe_only {
        cmd.arg("-E");
    } else {
        cmd.args(["-C", "1", "-W", "20"]);
    }
    let out = cmd.output().expect("run mosquitto_sub");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn answers_go_to_the_reply_topic() {
    let broker = Mosquitto::start();
    take_one(&broker, "tester", "out", true);
    let s = start(&broker, &[]);
    let calls = s.deploy_recorder("echo", json!({"topic": "in", "virga.reply-topic": "out"}));
    wait_subscribed(&calls, |b| broker.publish("in", b));
    broker.publish("in", "m1");
    loop {
        let m = take_one(&broker, "tester", "out", false);
        if m == "done:m1" {
            break;
        }
        assert!(m.starts_with("done:probe-"), "{m:?}");
    }
}

#[test]
fn mqtt5_user_properties_are_headers_and_answers_go_to_the_response_topic() {
    let broker = Mosquitto::start();
    take_one(&broker, "tester5", "v5/out", true);
    let s = start(&broker, &["--mqtt-version", "5"]);
    let calls = s.deploy_recorder("five", json!({"topic": "v5/in"}));
    wait_subscribed(&calls, |b| broker.publish("v5/in", b));
    let port = broker.port.to_string();
    let ok = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            "5",
            "-q",
            "1",
            "-t",
            "v5/in",
        ])
        .args([
            "-m",
            "hello",
            "-D",
            "publish",
            "user-property",
            "trace",
            "abc",
        ])
        .args(["-D", "publish", "response-topic", "v5/out"])
        .status()
        .unwrap()
        .success();
    assert!(ok, "mosquitto_pub -V 5");
    let recs = wait_real(&calls, 1, Duration::from_secs(20));
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(
        (recs[0].body.as_str(), recs[0].trace.as_str()),
        ("hello", "abc")
    );
    assert_eq!(recs[0].connector, "mqtt");
    assert_eq!(take_one(&broker, "tester5", "v5/out", false), "done:hello");
}

#[test]
fn messages_published_while_virga_is_down_arrive_after_its_restart() {
    let broker = Mosquitto::start();
    let mut s = start(&broker, &[]);
    let calls = s.deploy_recorder("later", json!({"topic": "later"}));
    wait_subscribed(&calls, |b| broker.publish("later", b));
    s.p.terminate();
    let lines: Vec<String> = (0..50).map(|i| format!("d{i:02}")).collect();
    broker.publish_lines("later", &lines);
    // The broker sends the session's 50 messages right after the next connect.
    s.p.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while distinct_bodies(&calls).len() < lines.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let want: BTreeSet<String> = lines.into_iter().collect();
    assert_eq!(distinct_bodies(&calls), want);
}
