//! Metrics and function logs end to end against the real `virga up`: calls with known
//! outcomes are counted exactly in `/metrics` (which `promtool check metrics` must accept),
//! and the lines functions write come back from `/system/logs` and `virga logs`, filtered,
//! followed live, with the follow subscription gone once the client leaves.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use virga_testkit::{script, virga_bin, Platform, PASSWORD};

/// Scrape `/metrics` (no credentials) into series → value.
fn scrape(p: &Platform) -> (String, HashMap<String, f64>) {
    let r = p.anon(Method::GET, "/metrics").send().unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = r.text().unwrap();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    (text, series)
}

fn value(series: &HashMap<String, f64>, key: &str) -> f64 {
    *series
        .get(key)
        .unwrap_or_else(|| panic!("no series {key} in {series:#?}"))
}

/// `promtool check metrics` on `text`: it must exist, succeed and report nothing.
fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: run scripts/setup (Debian package `prometheus`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {report}\n{text}"
    );
}

#[test]
fn metrics_count_calls_by_code_and_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    p.deploy_process("ok", "cat", json!({}));
    let fail = script(
        tmp.path(),
        "fail.sh",
        "cat >/dev/null; echo boom >&2; exit 3",
    );
    p.deploy_process("fail", &fail, json!({}));
    let slow = script(tmp.path(), "slow.sh", "sleep 30");
    p.deploy_process("slow", &slow, json!({"envVars": {"exec_timeout": "300ms"}}));
    p.deploy_process(
        "cold",
        "cat",
        json!({"labels": {"com.openfaas.scale.min": "0"}}),
    );

    for i in 0..5 {
        assert_eq!(p.invoke("ok", &format!("call {i}")).status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(p.invoke("fail", "x").status(), 500);
    }
    assert_eq!(p.invoke("slow", "").status(), 504);
    assert_eq!(p.invoke("ghost", "").status(), 404);
    // At zero replicas: this call waits for the instance it causes, a cold start.
    assert_eq!(p.invoke("cold", "brr").text().unwrap(), "brr");

    let (text, s) = scrape(&p);
    let l = |f: &str| format!("function_name=\"{f}.openfaas-fn\"");
    let calls = |f: &str, code: u16| {
        value(
            &s,
            &format!(
                "gateway_function_invocation_total{{{},code=\"{code}\"}}",
                l(f)
            ),
        )
    };
    let timed = |f: &str, code: u16| {
        value(
            &s,
            &format!(
                "gateway_functions_seconds_count{{{},code=\"{code}\"}}",
                l(f)
            ),
        )
    };
    assert_eq!(calls("ok", 200), 5.0);
    assert_eq!(timed("ok", 200), 5.0);
    assert_eq!(calls("fail", 500), 3.0);
    assert_eq!(timed("fail", 500), 3.0);
    assert_eq!(calls("slow", 504), 1.0);
    assert_eq!(timed("slow", 504), 1.0);
    assert_eq!(calls("cold", 200), 1.0);
    let bucket = format!(
        "gateway_functions_seconds_bucket{{{},code=\"200\",le=\"+Inf\"}}",
        l("ok")
    );
    assert_eq!(value(&s, &bucket), 5.0);
    for (f, n) in [("ok", 5.0), ("fail", 3.0), ("slow", 1.0)] {
        let started = format!("gateway_function_invocation_started{{{}}}", l(f));
        assert_eq!(value(&s, &started), n, "{f}");
    }
    assert!(!text.contains("ghost"), "unknown names are not recorded");
    assert!(!text.contains(&format!("{},code=\"500\"", l("ok"))));
    let timeouts = |f: &str| value(&s, &format!("virga_function_timeouts_total{{{}}}", l(f)));
    assert_eq!(timeouts("slow"), 1.0);
    assert_eq!(timeouts("ok"), 0.0);
    assert_eq!(
        value(&s, &format!("gateway_service_count{{{}}}", l("ok"))),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!("virga_instances{{{},state=\"ready\"}}", l("ok"))
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!("virga_instances{{{},state=\"starting\"}}", l("ok"))
        ),
        0.0
    );
    assert_eq!(
        value(&s, &format!("virga_cold_starts_total{{{}}}", l("cold"))),
        1.0
    );
    assert_eq!(
        value(
            &s,
            &format!("virga_cold_start_seconds_count{{{}}}", l("cold"))
        ),
        1.0
    );
    assert_eq!(value(&s, "virga_log_followers"), 0.0);

    // invocationCount in the OpenFaaS API is the same counter.
    let f = p.get_json("/system/function/fail");
    assert_eq!(f["invocationCount"], 3.0);

    promtool_check(&text);
}

/// Deploy `talker`: answers `out-BODY` and writes `err-line-BODY` to stderr, unprefixed.
fn deploy_talker(p: &Platform, tmp: &std::path::Path) {
    let talker = script(
        tmp,
        "talker.sh",
        r#"read x; echo "out-$x"; echo "err-line-$x" >&2"#,
    );
    p.deploy_process(
        "talker",
        &talker,
        json!({"envVars": {"prefix_logs": "false"}}),
    );
}

/// `GET /system/logs?QUERY` as parsed JSON lines.
fn logs(p: &Platform, query: &str) -> Vec<Value> {
    let r = p
        .sys(Method::GET, &format!("/system/logs?{query}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{query}");
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    r.text()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn texts(lines: &[Value]) -> Vec<&str> {
    lines.iter().map(|l| l["text"].as_str().unwrap()).collect()
}

fn err_lines(lines: &[Value]) -> Vec<&str> {
    texts(lines)
        .into_iter()
        .filter(|t| t.starts_with("err-line-"))
        .collect()
}

#[test]
fn logs_keep_function_output_with_tail_since_and_instance_filters() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    deploy_talker(&p, tmp.path());
    for i in 1..=3 {
        assert_eq!(
            p.invoke("talker", &format!("{i}\n")).text().unwrap(),
            format!("out-{i}\n")
        );
    }
    assert!(p.eventually(Duration::from_secs(10), || {
        err_lines(&logs(&p, "name=talker")).len() == 3
    }));
    let all = logs(&p, "name=talker&namespace=openfaas-fn");
    assert_eq!(err_lines(&all), ["err-line-1", "err-line-2", "err-line-3"]);
    let first = all.iter().find(|l| l["text"] == "err-line-1").unwrap();
    assert_eq!(first["name"], "talker");
    assert_eq!(first["namespace"], "openfaas-fn");
    let instance = first["instance"].as_str().unwrap().to_string();
    assert!(instance.starts_with("talker-"), "{instance}");
    let ts = first["timestamp"].as_str().unwrap();
    assert!(
        ts.len() > 20 && ts.contains('T') && ts.ends_with('Z'),
        "{ts}"
    );

    // tail: the last lines (a successful classic call logs nothing else).
    assert_eq!(
        texts(&logs(&p, "name=talker&tail=2")),
        ["err-line-2", "err-line-3"]
    );
    assert_eq!(logs(&p, "name=talker&tail=-1").len(), all.len());
    // since: a timestamp keeps that line and later ones; a duration reaches back from now.
    let second = all.iter().find(|l| l["text"] == "err-line-2").unwrap();
    let since = second["timestamp"].as_str().unwrap().replace('+', "%2B");
    assert_eq!(
        err_lines(&logs(&p, &format!("name=talker&since={since}"))),
        ["err-line-2", "err-line-3"]
    );
    assert_eq!(err_lines(&logs(&p, "name=talker&since=5m")).len(), 3);
    assert!(logs(&p, "name=talker&since=2999-01-01T00:00:00Z").is_empty());
    // instance filter.
    let mine = logs(&p, &format!("name=talker&instance={instance}"));
    assert_eq!(err_lines(&mine).len(), 3);
    assert!(mine.iter().all(|l| l["instance"] == instance.as_str()));
    assert!(logs(&p, "name=talker&instance=talker-999").is_empty());

    // The rotated file in the data directory has the lines too.
    let file = std::fs::read_to_string(dir.path().join("logs/talker.log")).unwrap();
    assert!(file.contains("\"text\":\"err-line-2\""), "{file}");

    // Errors: unknown function 404, malformed parameters 400 naming the parameter.
    let status = |q: &str| {
        let r = p
            .sys(Method::GET, &format!("/system/logs?{q}"))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(status("name=ghost").0, 404);
    let (code, msg) = status("name=talker&namespace=kube-system");
    assert_eq!(code, 404, "{msg}");
    assert!(msg.contains("namespace \"kube-system\" not found"), "{msg}");
    for (q, word) in [
        ("name=talker&tail=ten", "tail"),
        ("name=talker&since=yesterday", "since"),
        ("name=talker&since=5parsecs", "since"),
        ("name=talker&follow=maybe", "follow"),
        ("name=talker&namespace=Kube_System", "namespace"),
        ("tail=3", "name"),
    ] {
        let (code, msg) = status(q);
        assert_eq!(code, 400, "{q}: {msg}");
        assert!(msg.contains(word), "{q}: {msg}");
    }
    let r = p
        .anon(Method::GET, "/system/logs?name=talker")
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    // The CLI prints TIMESTAMP INSTANCE TEXT, or the JSON objects.
    let cli = |args: &[&str]| {
        Command::new(virga_bin())
            .arg("logs")
            .args(args)
            .env("VIRGA_URL", &p.url)
            .env("VIRGA_PASSWORD", PASSWORD)
            .env("VIRGA_CONFIG_DIR", tmp.path().join(".config"))
            .env_remove("OPENFAAS_URL")
            .output()
            .unwrap()
    };
    let out = cli(&["talker", "--tail", "2"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let parts: Vec<&str> = lines[1].splitn(3, ' ').collect();
    assert!(parts[0].ends_with('Z'), "{stdout}");
    assert_eq!(parts[1], instance);
    assert_eq!(parts[2], "err-line-3");
    let out = cli(&["talker", "--json", "--since", "5m", "--instance", &instance]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let parsed: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(err_lines(&parsed).len(), 3);
    let out = cli(&["talker", "--since", "soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("since"));
    let out = cli(&["ghost"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
}

fn followers(p: &Platform) -> f64 {
    value(&scrape(p).1, "virga_log_followers")
}

#[test]
fn follow_streams_new_lines_and_ends_when_the_client_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    deploy_talker(&p, tmp.path());
    assert_eq!(p.invoke("talker", "warm\n").status(), 200);

    let r = p
        .sys(Method::GET, "/system/logs?name=talker&follow=true&tail=0")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(p.eventually(Duration::from_secs(5), || followers(&p) == 1.0));
    let mut lines = BufReader::new(r).lines();
    assert_eq!(p.invoke("talker", "live\n").text().unwrap(), "out-live\n");
    let line: Value = loop {
        let l = lines
            .next()
            .expect("stream ended")
            .expect("read the stream");
        let v: Value = serde_json::from_str(&l).unwrap();
        if v["text"] != "err-line-warm" {
            break v;
        }
    };
    assert_eq!(line["text"], "err-line-live");
    assert_eq!(line["name"], "talker");
    // The client leaves: the server must end the subscription.
    drop(lines);
    assert!(
        p.eventually(Duration::from_secs(10), || followers(&p) == 0.0),
        "the follow stream outlived its client"
    );

    // Removing the function ends a follow stream from the server side.
    let r = p
        .sys(Method::GET, "/system/logs?name=talker&follow=true")
        .send()
        .unwrap();
    assert!(p.eventually(Duration::from_secs(5), || followers(&p) == 1.0));
    let r2 = p
        .sys(Method::DELETE, "/system/functions")
        .json(&json!({"functionName": "talker"}))
        .send()
        .unwrap();
    assert_eq!(r2.status(), 200);
    let rest = r.text().expect("the stream ends cleanly");
    assert!(rest.contains("err-line-live"), "{rest}");
    assert_eq!(followers(&p), 0.0);
}
