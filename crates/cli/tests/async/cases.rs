//! The behaviour cases, each run against both backends.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::support::{lines, Backend, Receiver, Setup};
use virga_testkit::script;

const WAIT: Duration = Duration::from_secs(30);

/// A classic function appending `CALL_ID PATH QUERY` per call to DIR/NAME.calls.
fn deploy_recorder(
    s: &Setup,
    name: &str,
    sleep: &str,
    annotations: serde_json::Value,
) -> std::path::PathBuf {
    let file = s.dir.join(format!("{name}.calls"));
    let sh = script(
        &s.dir,
        &format!("{name}.sh"),
        &format!(
            "cat >/dev/null; sleep {sleep}; echo \"$Http_X_Call_Id $Http_Path $Http_Query\" >> {}; echo done",
            file.display()
        ),
    );
    s.p.deploy_process(name, &sh, json!({ "annotations": annotations }));
    file
}

pub fn accepts_with_202_and_call_id(b: Backend) {
    let s = Setup::start(b);
    let file = deploy_recorder(&s, "rec", "0", json!({}));
    let r =
        s.p.anon(Method::POST, "/async-function/rec.openfaas-fn/a/b?x=1&y=2")
            .body("hi")
            .send()
            .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    assert!(!id.is_empty());
    let r = s.call_async("rec", "", &[("X-Call-Id", "my-own-id")]);
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["x-call-id"], "my-own-id");
    let r = s.call_async("nope", "", &[]);
    assert_eq!(r.status(), 404);
    assert!(
        s.p.eventually(WAIT, || lines(&file).len() >= 2),
        "not delivered"
    );
    let got = lines(&file);
    assert!(got.contains(&format!("{id} /a/b x=1&y=2")), "{got:?}");
    assert!(got.contains(&"my-own-id / ".to_string()), "{got:?}");
    // The CLI: `virga invoke --async` prints the call id.
    let out = s.virga(&["invoke", "rec", "--async"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(cli_id.len(), 36, "{cli_id:?}");
    assert!(s
        .p
        .eventually(WAIT, || lines(&file).iter().any(|l| l.starts_with(&cli_id))));
}

pub fn callback_gets_body_and_headers(b: Backend) {
    let s = Setup::start(b);
    s.deploy_flaky("echo", 0, 503, json!({}));
    let cb = Receiver::start();
    let out = s.virga(&["invoke", "echo", "--async", "--callback", &cb.url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let got = cb.wait_for(1, WAIT);
    assert_eq!(got.len(), 1, "no callback");
    let r = &got[0];
    assert_eq!(r.path, "/cb");
    assert_eq!(r.body, "echo:");
    assert_eq!(r.headers["x-call-id"], id);
    assert_eq!(r.headers["x-function-name"], "echo");
    assert_eq!(r.headers["x-function-status"], "200");
    assert_eq!(r.headers["content-type"], "text/x-flaky");
    let secs: f64 = r.headers["x-duration-seconds"].parse().unwrap();
    assert!((0.0..30.0).contains(&secs));
    let start: u128 = r.headers["x-start-time"].parse().unwrap();
    assert!(start > 1_600_000_000_000_000_000, "{start}");
    let r = s.call_async("echo", "payload", &[("X-Callback-Url", &cb.url)]);
    assert_eq!(r.status(), 202);
    let got = cb.wait_for(2, WAIT);
    assert_eq!(got[1].body, "echo:payload");
}

pub fn retries_503_with_backoff_then_succeeds(b: Backend) {
    let s = Setup::start(b);
    let calls = s.deploy_flaky(
        "flaky",
        2,
        503,
        json!({
            "com.openfaas.retry.attempts": "5",
            "com.openfaas.retry.min_wait": "400ms",
            "com.openfaas.retry.max_wait": "2s",
        }),
    );
    let cb = Receiver::start();
    let sent = Instant::now();
    let r = s.call_async("flaky", "x", &[("X-Callback-Url", &cb.url)]);
    assert_eq!(r.status(), 202);
    let id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    let got = cb.wait_for(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].headers["x-function-status"], "200");
    assert_eq!(got[0].body, "echo:x");
    // Two failures, then success; all three attempts carry the same call id.
    assert_eq!(lines(&calls), vec![id.clone(), id.clone(), id]);
    // Waits: at least half of 400ms, then half of 800ms (jitter is in the upper half).
    let took = got[0].at - sent;
    assert!(
        took >= Duration::from_millis(600),
        "retried too soon: {took:?}"
    );
    let q = s.queues();
    assert!(q["retried"].as_u64().unwrap() >= 2, "{q}");
}

pub fn dead_letters_list_retry_purge(b: Backend) {
    let s = Setup::start(b);
    let ann = json!({
        "com.openfaas.retry.attempts": "3",
        "com.openfaas.retry.min_wait": "50ms",
        "com.openfaas.retry.max_wait": "100ms",
    });
    // Fails exactly three times: dead after 3 attempts, then a retry from the dead letters works.
    let calls = s.deploy_flaky("three", 3, 503, ann.clone());
    let cb = Receiver::start();
    let r = s.call_async(
        "three",
        "d",
        &[("X-Callback-Url", &cb.url), ("X-Call-Id", "dl-1")],
    );
    assert_eq!(r.status(), 202);
    let got = cb.wait_for(1, WAIT);
    assert_eq!(
        got[0].headers["x-function-status"], "503",
        "callback told the final status"
    );
    let dead = s.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["id"], "dl-1");
    assert_eq!(dead[0]["function"], "three");
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["status"], 503);
    assert_eq!(lines(&calls).len(), 3);
    let out = s.virga(&["dead-letters", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("dl-1"));
    let out = s.virga(&["queue", "--json"]);
    let q: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let default = q["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "default")
        .unwrap();
    assert_eq!(default["dead"], 1, "{q}");
    // The same shows in /metrics: two retries and one dead letter of `three`, and the queue.
    let metrics =
        s.p.anon(Method::GET, "/metrics")
            .send()
            .unwrap()
            .text()
            .unwrap();
    for line in [
        "virga_queue_retries_total{function_name=\"three.openfaas-fn\"} 2",
        "virga_queue_dead_letters_total{function_name=\"three.openfaas-fn\"} 1",
        "virga_queue_depth{queue=\"default\"} 0",
        "virga_queue_inflight{queue=\"default\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    // A function that always fails does not stop the queue: other calls still get through.
    s.deploy_flaky("never", 1000, 503, ann);
    s.call_async("never", "", &[("X-Call-Id", "dl-2")]);
    let ok_calls = s.deploy_flaky("fine", 0, 503, json!({}));
    s.call_async("fine", "", &[]);
    assert!(s.p.eventually(WAIT, || lines(&ok_calls).len() == 1));
    assert!(s.p.eventually(WAIT, || s.dead_letters().len() == 2));
    // Retry dl-1 from the CLI: its fourth attempt succeeds.
    let out = s.virga(&["dead-letters", "retry", "dl-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = cb.wait_for(2, WAIT);
    assert_eq!(got[1].headers["x-function-status"], "200");
    assert_eq!(got[1].headers["x-call-id"], "dl-1");
    let dead = s.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["id"], "dl-2");
    assert!(!s
        .virga(&["dead-letters", "retry", "no-such"])
        .status
        .success());
    let out = s.virga(&["dead-letters", "purge"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Purged 1"));
    assert!(s.dead_letters().is_empty());
}

pub fn named_queue_isolation(b: Backend) {
    let s = Setup::start(b);
    // One at a time, 2 s each, on its own queue.
    let slow = deploy_recorder(
        &s,
        "slow",
        "2",
        json!({"com.openfaas.queue": "slow-queue", "com.virga.async.max_inflight": "1"}),
    );
    let fast = deploy_recorder(&s, "fast", "0", json!({}));
    for _ in 0..4 {
        assert_eq!(s.call_async("slow", "", &[]).status(), 202);
    }
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    assert_eq!(s.call_async("fast", "", &[]).status(), 202);
    assert!(s.p.eventually(WAIT, || lines(&fast).len() == 1));
    let took = sent.elapsed();
    assert!(
        took < Duration::from_millis(1800),
        "fast call waited {took:?} behind the slow queue"
    );
    assert!(lines(&slow).len() < 4, "slow calls were not slow");
    let q = s.queues();
    let slowq = q["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == "slow-queue")
        .cloned();
    assert!(slowq.is_some(), "{q}");
    assert!(s.p.eventually(WAIT, || lines(&slow).len() == 4));
}

pub fn bad_input(b: Backend) {
    let s = Setup::start_with(
        b,
        &[
            "--max-async-body-bytes",
            "1000",
            "--callback-retry-for",
            "1s",
        ],
    );
    let file = deploy_recorder(&s, "rec", "0", json!({}));
    // Oversized bodies, declared or streamed: 413 and nothing stored.
    let r = s.call_async("rec", &"x".repeat(1001), &[]);
    assert_eq!(r.status(), 413);
    assert!(r.text().unwrap().contains("--max-async-body-bytes"));
    let r =
        s.p.anon(Method::POST, "/async-function/rec")
            .body(reqwest::blocking::Body::new(std::io::Cursor::new(vec![
                b'y';
                2400
            ])))
            .send()
            .unwrap();
    assert_eq!(r.status(), 413);
    // Malformed callback URLs: 400.
    for bad in ["not a url", "/relative", "ftp://host/x"] {
        let r = s.call_async("rec", "", &[("X-Callback-Url", bad)]);
        assert_eq!(r.status(), 400, "{bad}");
        assert!(r.text().unwrap().contains("X-Callback-Url"));
    }
    // Invalid retry annotations are refused at deploy, naming the annotation.
    let r =
        s.p.sys(Method::POST, "/system/functions")
            .json(
                &json!({"service": "badretry", "image": "", "envProcess": "cat",
            "annotations": {"com.openfaas.retry.attempts": "lots"}}),
            )
            .send()
            .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("com.openfaas.retry.attempts"));
    // A callback to a closed port is retried until --callback-retry-for, then its result is a
    // dead letter; the queue goes on meanwhile.
    let r = s.call_async("rec", "", &[("X-Callback-Url", "http://127.0.0.1:1/cb")]);
    assert_eq!(r.status(), 202);
    assert!(s.p.eventually(WAIT, || lines(&file).len() == 1));
    for _ in 0..3 {
        assert_eq!(s.call_async("rec", "", &[]).status(), 202);
    }
    assert!(
        s.p.eventually(Duration::from_secs(5), || lines(&file).len() == 4),
        "queue blocked"
    );
    assert!(
        s.p.eventually(WAIT, || s.queues()["callbacksFailed"] == 1),
        "{}",
        s.queues()
    );
    let dead = s.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["kind"], "callback");
    assert!(dead[0]["reason"]
        .as_str()
        .unwrap()
        .contains("callback to http://127.0.0.1:1/cb"));
    // Nothing from the oversized call was stored or delivered.
    assert_eq!(lines(&file).len(), 4);
    let q = s.queues();
    let total: u64 = q["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["depth"].as_u64().unwrap() + q["inflight"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 0, "{q}");
}
