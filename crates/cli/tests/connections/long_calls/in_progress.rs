//! The calls in progress (`GET /system/virga/calls`, `virga calls`): sync calls (a streamed
//! answer counts until its last byte) and async deliveries are listed while they run, with
//! their function, namespace, call id, kind, start and elapsed time, only in the namespaces
//! the caller may read, and gone once they end.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::support::Fixture;

/// The calls in progress (`query` is `?namespace=...` or empty), as `token` (else admin) sees.
fn calls(f: &Fixture, query: &str, token: Option<&str>) -> Vec<Value> {
    let path = format!("/system/virga/calls{query}");
    let rb = match token {
        Some(t) => f.p.anon(Method::GET, &path).bearer_auth(t),
        None => f.p.sys(Method::GET, &path),
    };
    let r = rb.send().unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.json::<Vec<Value>>().unwrap()
}

fn ids(list: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = list
        .iter()
        .map(|c| c["callId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

/// A sync call of `path` with call id `id`, in the background.
fn call_in_background(f: &Fixture, path: &str, id: &str) -> std::thread::JoinHandle<String> {
    let rb =
        f.p.anon(Method::GET, path)
            .header("X-Call-Id", id)
            .timeout(Duration::from_secs(30));
    std::thread::spawn(move || rb.send().unwrap().text().unwrap())
}

/// While the three calls run: team-a's only, by query, by the CLI, and as a reader of
/// team-a (who may not ask for another namespace); nothing without credentials.
fn only_team_a(f: &Fixture) {
    assert_eq!(ids(&calls(f, "?namespace=team-a", None)), ["sync-team-a"]);
    let cli = f.p.cli(&f.dir, &["calls"]);
    for id in ["async-1", "sync-stream", "sync-team-a"] {
        assert!(cli.contains(id), "{cli}");
    }
    let json_out = f.p.cli(&f.dir, &["calls", "-n", "team-a", "--json"]);
    let parsed: Vec<Value> = serde_json::from_str(&json_out).unwrap();
    assert_eq!(ids(&parsed), ["sync-team-a"]);
    let r = f.p.send_json(
        Method::POST,
        "/system/virga/tokens",
        json!({"name": "watcher", "role": "viewer", "namespaces": ["team-a"]}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let token: Value = serde_json::from_str(&r.text).unwrap();
    let token = token["token"].as_str().unwrap();
    assert_eq!(ids(&calls(f, "", Some(token))), ["sync-team-a"]);
    let denied =
        f.p.anon(Method::GET, "/system/virga/calls?namespace=openfaas-fn")
            .bearer_auth(token)
            .send()
            .unwrap();
    assert_eq!(denied.status(), 403);
    let anonymous = f.p.anon(Method::GET, "/system/virga/calls").send().unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[test]
fn calls_in_progress_are_listed_while_they_run_and_gone_after() {
    let f = Fixture::start(&[]);
    let r = f.p.send_json(
        Method::POST,
        "/system/namespace/",
        json!({"name": "team-a"}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    f.deploy_http("slow", json!({}), json!({}));
    f.deploy_http("slow", json!({}), json!({"namespace": "team-a"}));
    assert!(calls(&f, "", None).is_empty());

    // Its answer's head comes at once, its last event after 4 s.
    let stream = call_in_background(&f, "/function/slow/events?n=2&quiet=4", "sync-stream");
    let other = call_in_background(&f, "/function/slow.team-a/sleep?s=4", "sync-team-a");
    let r =
        f.p.anon(Method::POST, "/async-function/slow/sleep?s=4")
            .header("X-Call-Id", "async-1")
            .send()
            .unwrap();
    assert_eq!(r.status(), 202);
    let all = |want: usize| {
        f.p.eventually(Duration::from_secs(3), || calls(&f, "", None).len() == want)
    };
    assert!(all(3), "{:?}", calls(&f, "", None));
    std::thread::sleep(Duration::from_millis(1200));
    let list = calls(&f, "", None);
    assert_eq!(ids(&list), ["async-1", "sync-stream", "sync-team-a"]);
    let by_id = |id: &str| list.iter().find(|c| c["callId"] == id).unwrap().clone();
    let s = by_id("sync-stream");
    assert_eq!(s["function"], "slow");
    assert_eq!(s["namespace"], "openfaas-fn");
    assert_eq!(s["kind"], "sync");
    assert_eq!(s["method"], "GET");
    assert_eq!(s["path"], "/events");
    assert!(s["instance"].as_str().unwrap().starts_with("slow-"), "{s}");
    let elapsed = s["elapsedSeconds"].as_f64().unwrap();
    assert!((1.0..10.0).contains(&elapsed), "{s}");
    let started = chrono::DateTime::parse_from_rfc3339(s["started"].as_str().unwrap()).unwrap();
    let age = chrono::Utc::now()
        .signed_duration_since(started)
        .num_milliseconds();
    assert!((1000..10_000).contains(&age), "{s}");
    let a = by_id("async-1");
    assert_eq!(
        (&a["kind"], &a["method"]),
        (&json!("async"), &json!("POST"))
    );
    assert_eq!(by_id("sync-team-a")["namespace"], "team-a");

    only_team_a(&f);

    // Gone once they end (the stream only with its last byte).
    assert!(other.join().unwrap().contains("slept"));
    assert!(stream.join().unwrap().contains("event 1 "));
    assert!(all(0), "{:?}", calls(&f, "", None));
}
