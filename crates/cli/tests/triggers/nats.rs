//! The NATS connector against a real nats-server: core subjects (one invocation per message
//! with its headers, replies to the reply subject and to `virga.reply-topic`, updates and
//! removal followed at once), JetStream streams (acked once queued: nothing lost or doubled
//! across a kill -9), a body over the limit dead-lettered with the reason, a function that
//! always fails retried then dead-lettered, and a broker restart mid-stream.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;
use virga_testkit::brokers::{NatsConn, NatsServer};

use crate::support::{metric, outage, real, records, wait_real, wait_subscribed, Setup};

fn start(nats: &NatsServer, extra: &[&str]) -> Setup {
    let mut args = vec!["--nats-url", nats.url.as_str()];
    args.extend_from_slice(extra);
    Setup::start(&args)
}

#[test]
fn core_messages_invoke_once_each_with_headers_and_replies() {
    let nats = NatsServer::start();
    let s = start(&nats, &[]);
    let calls = s.deploy_recorder("orders", json!({"topic": "orders,payments"}));
    let mut c = NatsConn::connect(nats.port);
    wait_subscribed(&calls, |b| c.publish("orders", None, b.as_bytes()));
    wait_subscribed(&calls, |b| c.publish("payments", None, b.as_bytes()));
    for i in 0..5 {
        c.publish("orders", None, format!("o{i}").as_bytes());
    }
    for i in 0..3 {
        c.publish("payments", None, format!("p{i}").as_bytes());
    }
    c.flush();
    let recs = wait_real(&calls, 8, Duration::from_secs(20));
    let mut bodies: Vec<String> = recs.iter().map(|r| r.body.clone()).collect();
    bodies.sort();
    assert_eq!(bodies, ["o0", "o1", "o2", "o3", "o4", "p0", "p1", "p2"]);
    for r in &recs {
        assert_eq!(r.connector, "nats");
        assert_eq!(r.ce_type, "virga.nats.message");
        assert_eq!(
            r.topic,
            if r.body.starts_with('o') {
                "orders"
            } else {
                "payments"
            }
        );
    }
    // A request gets the function's answer on its reply subject.
    let answer = c
        .request("orders", b"ask", Duration::from_secs(20))
        .expect("an answer");
    assert_eq!(answer.payload, b"done:ask");
    // Updating the function to drop a topic stops it at once.
    let r = s.p.send_json(
        reqwest::Method::PUT,
        "/system/functions",
        json!({"service": "orders", "image": "", "envProcess": "true",
               "annotations": {"topic": "orders"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let rows = s.triggers();
    let topics: Vec<&str> = rows.iter().map(|r| r["topic"].as_str().unwrap()).collect();
    assert_eq!(topics, ["orders", "orders"], "{rows:?}");
    assert!(rows
        .iter()
        .any(|r| r["connector"] == "nats" && r["enabled"] == true));
    assert!(rows
        .iter()
        .any(|r| r["connector"] == "mqtt" && r["enabled"] == false));
    s.remove("orders");
    let before = records(&calls).len();
    c.publish("payments", None, b"late");
    c.publish("orders", None, b"late");
    c.flush();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        records(&calls).len(),
        before,
        "a removed function was invoked"
    );
    let received = metric(
        &s.p,
        "virga_connector_messages_received_total{connector=\"nats\",function_name=\"orders.openfaas-fn\"}",
    );
    assert!(received.unwrap() >= 9.0, "{received:?}");
}

#[test]
fn answers_go_to_the_reply_topic() {
    let nats = NatsServer::start();
    let s = start(&nats, &[]);
    let mut results = NatsConn::connect(nats.port);
    results.subscribe("results");
    let calls = s.deploy_recorder(
        "job",
        json!({"topic": "jobs.*", "virga.reply-topic": "results"}),
    );
    let mut c = NatsConn::connect(nats.port);
    wait_subscribed(&calls, |b| c.publish("jobs.a", None, b.as_bytes()));
    c.publish("jobs.b", None, b"j1");
    c.flush();
    loop {
        let m = results
            .next_msg(Duration::from_secs(20))
            .expect("an answer on results");
        if m.payload == b"done:j1" {
            break;
        }
        assert!(m.payload.starts_with(b"done:probe-"), "{m:?}");
    }
    let recs = real(&records(&calls));
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].topic, "jobs.b");
}

#[test]
fn a_message_over_the_body_limit_is_dead_lettered_with_the_reason() {
    let nats = NatsServer::start();
    let s = start(&nats, &["--max-async-body-bytes", "1024"]);
    let calls = s.deploy_recorder("small", json!({"topic": "big"}));
    let mut c = NatsConn::connect(nats.port);
    wait_subscribed(&calls, |b| c.publish("big", None, b.as_bytes()));
    c.publish("big", None, &[b'x'; 2000]);
    c.publish("big", None, b"fits");
    c.flush();
    let recs = wait_real(&calls, 1, Duration::from_secs(20));
    let letters = || s.p.get_json("/system/virga/dead-letters");
    assert!(s.p.eventually(Duration::from_secs(10), || letters()
        .as_array()
        .unwrap()
        .len()
        == 1));
    let d = &letters()[0];
    assert_eq!(d["function"], "small");
    assert_eq!(d["status"], 413);
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains("2000 bytes, over the body limit of 1024"),
        "{reason}"
    );
    let bodies: Vec<&str> = recs.iter().map(|r| r.body.as_str()).collect();
    assert_eq!(bodies, ["fits"]);
}

#[test]
fn a_function_that_always_fails_is_retried_then_dead_lettered() {
    let nats = NatsServer::start();
    let s = start(&nats, &[]);
    let calls = s.dir.join("fail.calls");
    let annotations = json!({
        "topic": "work",
        "com.openfaas.retry.attempts": "3",
        "com.openfaas.retry.codes": "500",
        "com.openfaas.retry.min_wait": "10ms",
        "com.openfaas.retry.max_wait": "20ms",
    });
    s.deploy_with("fail", annotations, Some(500), &calls);
    let mut c = NatsConn::connect(nats.port);
    wait_subscribed(&calls, |b| c.publish("work", None, b.as_bytes()));
    c.publish("work", None, b"boom");
    c.flush();
    let dead = || {
        s.p.get_json("/system/virga/dead-letters")
            .as_array()
            .unwrap()
            .clone()
    };
    let probes = || {
        records(&calls)
            .iter()
            .map(|r| r.body.clone())
            .filter(|b| b.starts_with("probe-"))
            .collect::<BTreeSet<_>>()
            .len()
    };
    assert!(s
        .p
        .eventually(Duration::from_secs(20), || dead().len() == probes() + 1));
    std::thread::sleep(Duration::from_millis(300));
    let booms = records(&calls).iter().filter(|r| r.body == "boom").count();
    assert_eq!(booms, 3, "three attempts, then a dead letter");
    assert!(dead()
        .iter()
        .all(|d| d["reason"] == "status 500 after 3 attempt(s)"));
    let failed = metric(
        &s.p,
        "virga_connector_failures_total{connector=\"nats\",function_name=\"fail.openfaas-fn\"}",
    );
    assert!(failed.unwrap() >= 3.0, "{failed:?}");
}

#[test]
fn a_broker_restart_mid_stream_is_survived() {
    let mut nats = NatsServer::start();
    let s = start(&nats, &[]);
    let calls = s.deploy_recorder("steady", json!({"topic": "steady"}));
    let mut c = NatsConn::connect(nats.port);
    wait_subscribed(&calls, |b| c.publish("steady", None, b.as_bytes()));
    for i in 0..20 {
        c.publish("steady", None, format!("a{i}").as_bytes());
    }
    c.flush();
    assert_eq!(wait_real(&calls, 20, Duration::from_secs(20)).len(), 20);
    outage(&s, "nats", Duration::from_secs(10), |down| match down {
        true => nats.stop(),
        false => nats.restart(),
    });
    let mut c = NatsConn::connect(nats.port);
    wait_subscribed(&calls, |b| c.publish("steady", None, b.as_bytes()));
    for i in 0..20 {
        c.publish("steady", None, format!("b{i}").as_bytes());
    }
    c.flush();
    let got = |prefix: &str| {
        real(&records(&calls))
            .iter()
            .filter(|r| r.body.starts_with(prefix))
            .count()
    };
    assert!(s.p.eventually(Duration::from_secs(20), || got("b") == 20));
    assert_eq!(got("a"), 20);
    let log = s.stderr();
    assert!(log.contains("nats connector: lost"), "{log}");
}

#[test]
fn jetstream_messages_are_acked_once_queued_and_survive_a_kill9() {
    let nats = NatsServer::start();
    let mut c = NatsConn::connect(nats.port);
    let created = c.js_api(
        "STREAM.CREATE.ORDERS",
        &json!({"name": "ORDERS", "subjects": ["shop.orders.>"], "storage": "file"}),
    );
    assert!(created.get("error").is_none(), "{created}");
    let total = 300;
    // Stored before any consumer exists: the stream keeps them for the function.
    for i in 0..total {
        let body = format!("j{i:03}");
        let ack = c.request("shop.orders.new", body.as_bytes(), Duration::from_secs(10));
        assert!(ack.is_some(), "JetStream stored the message");
    }
    // A small queue cap: at the kill, many messages are taken but waiting for room, unacked.
    let mut s = start(&nats, &["--async-max-depth-per-function", "20"]);
    let calls = s.deploy_recorder(
        "orders",
        json!({"topic": "shop.orders.>", "virga.nats.stream": "ORDERS"}),
    );
    wait_real(&calls, 50, Duration::from_secs(30));
    s.p.kill9();
    let at_kill = real(&records(&calls)).len();
    s.p.restart();
    let distinct = || {
        real(&records(&calls))
            .into_iter()
            .map(|r| r.body)
            .collect::<BTreeSet<_>>()
    };
    // Unacked messages come again once JetStream's ack wait (30 s) has passed.
    assert!(
        s.p.eventually(Duration::from_secs(90), || distinct().len() == total),
        "lost: {} of {total}",
        distinct().len()
    );
    assert!(at_kill < total, "the kill came after the stream");
    let recs = real(&records(&calls));
    assert!(recs
        .iter()
        .all(|r| r.connector == "nats" && r.topic == "shop.orders.new"));
    assert!(
        recs.iter().all(|r| r.message_id.starts_with("ORDERS:")),
        "{:?}",
        recs[0]
    );
    // Acked messages are not handed out again: a clean restart brings nothing new.
    let n = recs.len();
    s.p.terminate();
    s.p.restart();
    std::thread::sleep(Duration::from_millis(1_000));
    assert_eq!(real(&records(&calls)).len(), n, "acked messages came again");
    eprintln!(
        "JetStream: kill -9 after {at_kill}; all {total} delivered, {} twice",
        n - total
    );
}

#[test]
fn a_broker_unreachable_at_start_is_dialled_until_it_comes() {
    let mut nats = NatsServer::start();
    nats.stop();
    let s = start(&nats, &[]);
    // HTTP serves without the broker.
    assert_eq!(
        s.p.anon(reqwest::Method::GET, "/healthz")
            .send()
            .unwrap()
            .status(),
        200
    );
    let calls = s.deploy_recorder("late", json!({"topic": "late"}));
    nats.restart();
    let up = "virga_connector_connected{connector=\"nats\"}";
    assert!(s
        .p
        .eventually(Duration::from_secs(30), || metric(&s.p, up) == Some(1.0)));
    let mut c = NatsConn::connect(nats.port);
    wait_subscribed(&calls, |b| c.publish("late", None, b.as_bytes()));
    c.publish("late", None, b"hello");
    c.flush();
    let recs = wait_real(&calls, 1, Duration::from_secs(20));
    assert_eq!(recs[0].body, "hello");
}

#[test]
fn an_async_call_cannot_pose_as_a_connector_to_publish_to_the_broker() {
    let nats = NatsServer::start();
    let s = start(&nats, &[]);
    let mut spy = NatsConn::connect(nats.port);
    spy.subscribe("internal.secrets");
    let calls = s.deploy_recorder("open", json!({}));
    let r =
        s.p.anon(reqwest::Method::POST, "/async-function/open")
            .header("X-Connector", "nats")
            .header("X-Reply-To", "internal.secrets")
            .body("forged")
            .send()
            .unwrap();
    assert_eq!(r.status(), 202);
    let recs = wait_real(&calls, 1, Duration::from_secs(20));
    assert_eq!(recs[0].body, "forged");
    assert_eq!(
        recs[0].connector, "",
        "the client's X-Connector reached the function"
    );
    assert!(
        spy.next_msg(Duration::from_millis(500)).is_none(),
        "the answer was published to the client's subject"
    );
}
