//! Scaling through the real `virga up`: the autoscaler adds replicas under load (CPU load of
//! pooled sandboxes included), idle functions go to zero and come back on the next call,
//! `max_inflight` gives 429 after a brief wait, a call held at zero gets a clear 503, and a
//! call whose instance died is retried; a namespace quota caps the autoscaler.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use virga_testkit::Platform;

fn status(p: &Platform, name: &str) -> Value {
    p.sys(Method::GET, &format!("/system/function/{name}"))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

fn replicas(p: &Platform, name: &str) -> (u64, u64) {
    let s = status(p, name);
    (
        s["replicas"].as_u64().unwrap(),
        s["availableReplicas"].as_u64().unwrap(),
    )
}

/// Watchdog processes of the platform whose data directory is `dir` (their cwd is inside it).
fn watchdogs(dir: &Path) -> Vec<i32> {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            comm.trim() == "virga-watchdog" && cwd.starts_with(&dir)
        })
        .collect()
}

/// Six clients making twelve calls each to `name` (a `cat` function) at once; every call
/// must be answered with its own body.
fn load_step(p: &Arc<Platform>, name: &'static str) {
    let workers: Vec<_> = (0..6)
        .map(|i| {
            let p = p.clone();
            std::thread::spawn(move || {
                (0..12)
                    .map(|j| {
                        let r = p.invoke(name, &format!("{i}-{j}"));
                        (r.status().as_u16(), r.text().unwrap())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        for (j, (code, body)) in w.join().unwrap().into_iter().enumerate() {
            assert_eq!((code, body.as_str()), (200, format!("{i}-{j}").as_str()));
        }
    }
}

#[test]
fn a_load_step_on_a_capacity_function_adds_replicas_and_serves_every_request() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(Platform::start(dir.path()));
    p.deploy_script(
        "busy",
        "sleep 0.2; cat",
        json!({"labels": {
            "com.openfaas.scale.type": "capacity",
            "com.openfaas.scale.target": "1",
            "com.openfaas.scale.max": "4",
        }}),
    );
    assert!(p.eventually(Duration::from_secs(10), || replicas(&p, "busy").1 == 1));
    let stop = Arc::new(AtomicBool::new(false));
    let step = Instant::now();
    let extra_at = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (p, stop, extra_at) = (p.clone(), stop.clone(), extra_at.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(Ordering::SeqCst) {
                let ready = replicas(&p, "busy").1;
                if ready > 1 && extra_at.load(Ordering::SeqCst) == 0 {
                    extra_at.store(step.elapsed().as_millis() as u64, Ordering::SeqCst);
                }
                most = most.max(ready);
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        })
    };
    load_step(&p, "busy");
    stop.store(true, Ordering::SeqCst);
    let most = watcher.join().unwrap();
    assert!(most > 1, "replicas never rose above 1 (max ready {most})");
    let ms = extra_at.load(Ordering::SeqCst);
    eprintln!("an extra replica was serving {ms} ms after the load step");
    assert!(ms <= 3000, "extra replica only after {ms} ms");
    assert!(replicas(&p, "busy").0 <= 4);
}

#[test]
fn an_idle_function_goes_to_zero_and_the_next_request_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    p.deploy_script(
        "nap",
        "cat",
        json!({"labels": {
            "com.openfaas.scale.zero": "true",
            "com.openfaas.scale.zero-duration": "1s",
        }}),
    );
    assert_eq!(p.invoke("nap", "one").text().unwrap(), "one");
    assert!(
        p.eventually(Duration::from_secs(10), || replicas(&p, "nap") == (0, 0)),
        "still {:?}",
        replicas(&p, "nap")
    );
    assert!(
        p.eventually(Duration::from_secs(5), || watchdogs(dir.path()).is_empty()),
        "processes left at zero: {:?}",
        watchdogs(dir.path())
    );
    let r = p.invoke("nap", "two");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "two");
    assert_eq!(replicas(&p, "nap"), (1, 1));
}

#[test]
fn functions_without_scale_to_zero_never_go_below_min() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_with(dir.path(), &["--scale-down-window", "1"]);
    p.deploy_script(
        "steady",
        "cat",
        json!({"labels": {
            "com.openfaas.scale.min": "2",
            "com.openfaas.scale.zero": "false",
            "com.openfaas.scale.zero-duration": "1s",
        }}),
    );
    p.deploy_script(
        "default",
        "cat",
        json!({"labels": {"com.openfaas.scale.zero-duration": "1s"}}),
    );
    assert!(p.eventually(Duration::from_secs(10), || replicas(&p, "steady") == (2, 2)));
    assert_eq!(p.invoke("steady", "x").text().unwrap(), "x");
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(replicas(&p, "steady"), (2, 2));
    assert_eq!(replicas(&p, "default"), (1, 1));
}

#[test]
fn a_call_held_at_zero_gets_a_clear_503_when_no_instance_becomes_ready() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_with(dir.path(), &["--ready-timeout", "2"]);
    // The watchdog proxies to an upstream that never listens: never ready.
    p.deploy_script(
        "stuck",
        "cat",
        json!({
            "labels": {"com.openfaas.scale.min": "0"},
            "envVars": {"mode": "http", "fprocess": "sleep 600", "upstream_url": "http://127.0.0.1:5000"},
        }),
    );
    assert_eq!(replicas(&p, "stuck"), (0, 0));
    let t = Instant::now();
    let r = p.invoke("stuck", "hello?");
    let waited = t.elapsed();
    assert_eq!(r.status(), 503);
    let msg = r.text().unwrap();
    assert!(msg.contains("no ready instance"), "{msg}");
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
}

#[test]
fn invalid_scaling_labels_are_rejected_naming_the_label() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    for (label, value) in [
        ("com.openfaas.scale.min", "-1"),
        ("com.openfaas.scale.max", "0"),
        ("com.openfaas.scale.target", "many"),
        ("com.openfaas.scale.type", "memory"),
        ("com.openfaas.scale.target-proportion", "2"),
        ("com.openfaas.scale.zero", "yes"),
        ("com.openfaas.scale.zero-duration", "soon"),
    ] {
        let r = p.send_json(
            Method::POST,
            "/system/functions",
            json!({"service": "bad", "envProcess": "cat", "labels": {label: value}}),
        );
        assert_eq!(r.status, 400, "{label}={value}");
        let msg = r.text;
        assert!(msg.contains(label), "{label}: {msg}");
    }
    assert_eq!(
        p.sys(Method::GET, "/system/function/bad")
            .send()
            .unwrap()
            .status(),
        404
    );
}

#[test]
fn max_inflight_queues_briefly_then_answers_429() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(Platform::start_with(
        dir.path(),
        &["--queue-timeout-ms", "500"],
    ));
    let one_at_a_time = json!({
        "envVars": {"max_inflight": "1"},
        "labels": {"com.openfaas.scale.max": "1"},
    });
    p.deploy_script("slow", "sleep 2; cat", one_at_a_time.clone());
    p.deploy_script("quick", "sleep 0.2; cat", one_at_a_time);
    assert!(
        p.eventually(Duration::from_secs(10), || replicas(&p, "slow").1 == 1
            && replicas(&p, "quick").1 == 1)
    );
    // A second call waits for the busy instance: served when it frees up in time...
    let first = {
        let p = p.clone();
        std::thread::spawn(move || p.invoke("quick", "a").status())
    };
    std::thread::sleep(Duration::from_millis(50));
    let r = p.invoke("quick", "b");
    assert_eq!(r.status(), 200);
    assert_eq!(first.join().unwrap(), 200);
    // ...and 429 after the brief wait when it does not.
    let first = {
        let p = p.clone();
        std::thread::spawn(move || p.invoke("slow", "a").status())
    };
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let r = p.invoke("slow", "b");
    let waited = t.elapsed();
    assert_eq!(r.status(), 429);
    assert!(r.text().unwrap().contains("max_inflight"));
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_millis(1500),
        "{waited:?}"
    );
    assert_eq!(first.join().unwrap(), 200);
}

#[test]
fn a_call_is_retried_on_another_instance_when_one_dies() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(Platform::start(dir.path()));
    p.deploy_script(
        "pair",
        "cat",
        json!({"labels": {"com.openfaas.scale.min": "2"}}),
    );
    assert!(p.eventually(Duration::from_secs(10), || replicas(&p, "pair") == (2, 2)));
    for round in 0..3 {
        let pids = watchdogs(dir.path());
        assert_eq!(pids.len(), 2, "{pids:?}");
        // Kill one instance and call at once, many times in parallel: every call is answered
        // (calls that reach the dead one before it is out of rotation are retried).
        let victim = pids[round % 2];
        // SAFETY: kill(2) of an instance process this test's platform started.
        unsafe { libc::kill(victim, libc::SIGKILL) };
        // Once it has exited (its sockets closed), before the platform has necessarily noticed.
        let exited = || {
            let stat = std::fs::read_to_string(format!("/proc/{victim}/stat")).unwrap_or_default();
            stat.is_empty()
                || stat
                    .rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
        };
        assert!(p.eventually(Duration::from_secs(5), exited));
        // Let the gateway's pooled connections see the close: a call already written into a
        // dead keep-alive connection has had its body consumed and is not retried.
        std::thread::sleep(Duration::from_millis(20));
        let calls: Vec<_> = (0..8)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    let r = p.invoke("pair", &format!("{round}-{i}"));
                    (r.status().as_u16(), r.text().unwrap())
                })
            })
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            let (code, body) = c.join().unwrap();
            assert_eq!((code, body), (200, format!("{round}-{i}")));
        }
        assert!(p.eventually(Duration::from_secs(10), || replicas(&p, "pair") == (2, 2)));
        assert!(p.eventually(Duration::from_secs(5), || watchdogs(dir.path()).len() == 2));
    }
}

/// Scale to zero and back through runc sandboxes (needs root and runc, as CI has).
#[test]
fn scale_to_zero_and_back_under_runc() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(dir.path(), &[]);
    p.deploy_script(
        "nap",
        "cat",
        json!({"labels": {
            "com.openfaas.scale.zero": "true",
            "com.openfaas.scale.zero-duration": "1s",
        }}),
    );
    assert_eq!(p.invoke("nap", "one").text().unwrap(), "one");
    assert!(p.eventually(Duration::from_secs(15), || replicas(&p, "nap") == (0, 0)));
    let t = Instant::now();
    let r = p.invoke("nap", "two");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "two");
    eprintln!("runc scale from zero answered in {:?}", t.elapsed());
    assert_eq!(replicas(&p, "nap"), (1, 1));
}

/// A python3-http handler that burns one CPU second per call.
const BURN: &str = "import time\n\ndef handle(event, context):\n    end = time.process_time() + 1.0\n    while time.process_time() < end:\n        pass\n    return 'burnt'\n";

#[test]
fn cpu_scaling_counts_sandboxes_bound_from_the_warm_pool() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let p = Arc::new(Platform::start_runc(dir.path(), &["--warm-pool", "1"]));
    p.cli(work.path(), &["new", "burn", "--lang", "python3-http"]);
    std::fs::write(work.path().join("burn/handler.py"), BURN).unwrap();
    // At zero until called, so its instance is the pooled sandbox once the pool is ready.
    let stack = "provider:\n  name: openfaas\nfunctions:\n  burn:\n    lang: python3-http\n    handler: ./burn\n    labels:\n      com.openfaas.scale.min: \"0\"\n      com.openfaas.scale.max: \"3\"\n      com.openfaas.scale.type: cpu\n      com.openfaas.scale.target: \"100\"\n";
    std::fs::write(work.path().join("stack.yml"), stack).unwrap();
    p.cli(work.path(), &["deploy", "-f", "stack.yml"]);
    let pool = "virga_warm_pool_instances{function_name=\"python3-http-";
    assert!(p.eventually(Duration::from_secs(60), || p.metric(pool) == Some(1.0)));
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (p, stop) = (p.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    assert_eq!(p.invoke("burn", "").text().unwrap(), "burnt");
                }
            })
        })
        .collect();
    let scaled = p.eventually(Duration::from_secs(30), || replicas(&p, "burn").0 > 1);
    stop.store(true, Ordering::SeqCst);
    for c in callers {
        c.join().unwrap();
    }
    let warm = "virga_warm_starts_total{function_name=\"burn.openfaas-fn\"}";
    assert!(
        p.metric(warm) >= Some(1.0),
        "its first instance was not pooled"
    );
    assert!(scaled, "a core busy in a pooled sandbox added no replica");
}

#[test]
fn the_autoscaler_stops_at_the_namespace_replica_quota() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(Platform::start(dir.path()));
    let r = p.send_json(
        Method::POST,
        "/system/namespace/",
        json!({"name": "capped", "annotations": {"virga.quota.replicas": "2"}}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    p.deploy_script(
        "busy",
        "sleep 0.2; cat",
        json!({"namespace": "capped", "labels": {
            "com.openfaas.scale.type": "capacity",
            "com.openfaas.scale.target": "1",
            "com.openfaas.scale.max": "4",
        }}),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (p, stop) = (p.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut most = 0;
            while !stop.load(Ordering::SeqCst) {
                most = most.max(replicas(&p, "busy.capped").0);
                std::thread::sleep(Duration::from_millis(50));
            }
            most
        })
    };
    load_step(&p, "busy.capped");
    stop.store(true, Ordering::SeqCst);
    let most = watcher.join().unwrap();
    assert_eq!(most, 2, "the autoscaler wanted 4 and the quota allows 2");
}
