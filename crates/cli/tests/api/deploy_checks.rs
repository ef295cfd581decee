//! What the deploy API accepts: replica counts within the function's and the platform's
//! bounds, watchdog variables that the watchdog can run with, one definition per name under
//! concurrent creates, and unknown namespaces on every route.

use std::sync::{Arc, Barrier};

use reqwest::Method;
use serde_json::{json, Value};
use virga_testkit::Platform;

const HUGE: &str = "18446744073709551615";

#[test]
fn replica_counts_beyond_the_bounds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    for label in ["com.openfaas.scale.min", "com.openfaas.scale.max"] {
        let r = p.send_json(
            Method::POST,
            "/system/functions",
            json!({"service": "big", "envProcess": "cat",
                   "labels": {"com.openfaas.scale.max": HUGE, label: HUGE}}),
        );
        assert_eq!(r.status, 400, "{label}: {}", r.text);
        assert!(
            r.text.contains(label) && r.text.contains("1000"),
            "{}",
            r.text
        );
    }
    p.deploy_process(
        "echo",
        "cat",
        json!({"labels": {"com.openfaas.scale.max": "3"}}),
    );
    let scale = |n: Value| {
        p.send_json(
            Method::POST,
            "/system/scale-function/echo",
            json!({"serviceName": "echo", "replicas": n}),
        )
    };
    for n in [json!(u64::MAX), json!(4)] {
        let r = scale(n.clone());
        assert_eq!(r.status, 400, "{n}: {}", r.text);
        assert!(
            r.text.contains("replicas") && r.text.contains("com.openfaas.scale.max"),
            "{}",
            r.text
        );
    }
    let r = scale(json!(-1));
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(scale(json!(3)).status, 202);
    let f = p.get_json("/system/function/echo");
    assert_eq!(f["replicas"], 3);
    let r = p.send_json(
        Method::PUT,
        "/system/functions",
        json!({"service": "echo", "envProcess": "cat", "labels": {"com.openfaas.scale.max": HUGE}}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(p.invoke("echo", "still here").text().unwrap(), "still here");
}

#[test]
fn stored_replica_counts_beyond_the_bounds_are_clamped_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What an older gateway stored without checking.
        let store =
            virga_store::Store::open(dir.path(), virga_store::SecretsKey::random()).unwrap();
        let f: virga_store::StoredFunction = serde_json::from_value(json!({
            "deployment": {"service": "old", "envProcess": "cat", "namespace": "openfaas-fn",
                           "labels": {"com.openfaas.scale.max": "2"}},
            "created_at": "2024-05-01T12:00:00Z",
            "replicas": u64::MAX,
        }))
        .unwrap();
        store.create_function(&f).unwrap();
    }
    // The gateway comes up and serves instead of creating instances without end.
    let p = Platform::start(dir.path());
    assert_eq!(p.invoke("old", "up").text().unwrap(), "up");
    let f = p.get_json("/system/function/old");
    assert!(f["replicas"].as_u64().unwrap() <= 2, "{f}");
    assert_eq!(
        p.anon(Method::GET, "/healthz").send().unwrap().status(),
        200
    );
}

#[test]
fn watchdog_variables_are_checked_at_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let bad = [
        (
            json!({"envVars": {"exec_timeout": "banana"}}),
            "envVars.exec_timeout",
        ),
        (
            json!({"envVars": {"read_timeout": "-1s"}}),
            "envVars.read_timeout",
        ),
        (
            json!({"envVars": {"write_timeout": "10x"}}),
            "envVars.write_timeout",
        ),
        (
            json!({"envVars": {"healthcheck_interval": "1.5"}}),
            "envVars.healthcheck_interval",
        ),
        (
            json!({"envVars": {"max_inflight": "-3"}}),
            "envVars.max_inflight",
        ),
        (json!({"envVars": {"port": "99999"}}), "envVars.port"),
        (json!({"envVars": {"mode": "static"}}), "envVars.mode"),
        (
            json!({"envVars": {"upstream_url": "ftp://x"}}),
            "envVars.upstream_url",
        ),
        (
            json!({"envVars": {"prefix_logs": "maybe"}}),
            "envVars.prefix_logs",
        ),
        (
            json!({"envVars": {"GREETING": "hi\u{0}there"}}),
            "envVars.GREETING",
        ),
        (json!({"envProcess": "cat\u{0} /etc/shadow"}), "envProcess"),
        // Longer than exec can pass: every start would fail with E2BIG.
        (
            json!({"envVars": {"BLOB": "x".repeat(200 << 10)}}),
            "envVars.BLOB",
        ),
    ];
    for (extra, field) in &bad {
        let mut body = json!({"service": "f", "envProcess": "cat"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = p.send_json(Method::POST, "/system/functions", body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.text.starts_with(field), "{body}: {}", r.text);
    }
    assert!(p
        .get_json("/system/functions")
        .as_array()
        .unwrap()
        .is_empty());

    let good = json!({"exec_timeout": "1m30s", "read_timeout": "5", "write_timeout": "1.5h",
                      "healthcheck_interval": "500ms", "max_inflight": "4", "GREETING": "hi"});
    p.deploy_process("f", "env", json!({"envVars": good}));
    let out = p.invoke("f", "").text().unwrap();
    assert!(out.contains("GREETING=hi"), "{out}");
    let r = p.send_json(
        Method::PUT,
        "/system/functions",
        json!({"service": "f", "envProcess": "env", "envVars": {"exec_timeout": "banana"}}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(p.invoke("f", "").text().unwrap().contains("GREETING=hi"));
}

#[test]
fn of_concurrent_creates_of_one_name_the_one_that_got_202_runs() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(Platform::start(dir.path()));
    const RACERS: usize = 8;
    for round in 0..10 {
        let name = format!("race{round}");
        let barrier = Arc::new(Barrier::new(RACERS));
        let racers: Vec<_> = (0..RACERS)
            .map(|i| {
                let (p, barrier, name) = (p.clone(), barrier.clone(), name.clone());
                std::thread::spawn(move || {
                    let body =
                        json!({"service": name, "envProcess": format!("echo definition-{i}")});
                    barrier.wait();
                    (i, p.send_json(Method::POST, "/system/functions", body))
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<usize> = results
            .iter()
            .filter(|(_, r)| r.status == 202)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {:?}",
            results
                .iter()
                .map(|(i, r)| (i, r.status))
                .collect::<Vec<_>>()
        );
        for (_, r) in results.iter().filter(|(_, r)| r.status != 202) {
            assert_eq!(r.status, 409, "{}", r.text);
        }
        let want = format!("definition-{}", winners[0]);
        assert_eq!(
            p.invoke(&name, "").text().unwrap().trim(),
            want,
            "round {round}"
        );
        assert_eq!(
            p.get_json(&format!("/system/function/{name}"))["envProcess"],
            format!("echo {want}")
        );
    }
}

#[test]
fn every_route_refuses_an_unknown_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    p.deploy_process("echo", "cat", json!({}));
    p.create_secret("k", "v");
    let get = |path: &str| {
        let r = p.sys(Method::GET, path).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    for path in [
        "/system/functions?namespace=other",
        "/system/function/echo?namespace=other",
        "/system/secrets?namespace=other",
        "/system/logs?name=echo&namespace=other",
    ] {
        let (status, text) = get(path);
        assert_eq!(status, 404, "{path}: {text}");
        assert!(
            text.contains("namespace \"other\" not found"),
            "{path}: {text}"
        );
    }
    for path in [
        "/system/functions?namespace=openfaas-fn",
        "/system/function/echo?namespace=openfaas-fn",
        "/system/secrets?namespace=openfaas-fn",
        "/system/functions",
    ] {
        let (status, text) = get(path);
        assert_eq!(status, 200, "{path}: {text}");
    }
    let writes = [
        (
            Method::DELETE,
            "/system/secrets",
            json!({"name": "k", "namespace": "other"}),
            404,
        ),
        (
            Method::DELETE,
            "/system/secrets",
            json!({"name": "k", "namespace": {}}),
            400,
        ),
        (
            Method::DELETE,
            "/system/functions",
            json!({"functionName": "echo", "namespace": "other"}),
            404,
        ),
        (
            Method::POST,
            "/system/scale-function/echo",
            json!({"serviceName": "echo", "replicas": 0, "namespace": "other"}),
            404,
        ),
        (
            Method::POST,
            "/system/functions",
            json!({"service": "new", "envProcess": "cat", "namespace": "other"}),
            404,
        ),
        (
            Method::POST,
            "/system/secrets",
            json!({"name": "k2", "value": "v", "namespace": "Not_A_Label"}),
            400,
        ),
    ];
    for (method, path, body, want) in writes {
        let r = p.send_json(method, path, body.clone());
        assert_eq!(r.status, want, "{path} {body}: {}", r.text);
        assert!(r.text.contains("namespace"), "{path} {body}: {}", r.text);
    }
    assert!(get("/system/secrets").1.contains("\"k\""));
    assert_eq!(p.get_json("/system/function/echo")["replicas"], 1);
    assert_eq!(p.invoke("echo", "here").text().unwrap(), "here");
    let r = p.send_json(
        Method::DELETE,
        "/system/secrets",
        json!({"name": "k", "namespace": "openfaas-fn"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
}

/// An update that cannot be prepared (it lists a secret that does not exist) changes nothing:
/// the running definition keeps serving and keeps reading its own secrets.
#[test]
fn a_failed_update_leaves_the_running_function_and_its_secrets_alone() {
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start(data.path());
    p.create_secret("token", "t0k");
    let script = "cat \"$secret_mount_path/token\"";
    let sh = format!("sh -c '{script}'");
    p.deploy_process("reader", &sh, json!({"secrets": ["token"]}));
    assert_eq!(p.invoke("reader", "").text().unwrap(), "t0k");
    let r = p.send_json(
        Method::PUT,
        "/system/functions",
        json!({"service": "reader", "envProcess": sh, "secrets": ["missing", "token"]}),
    );
    assert!(r.status >= 400, "{} {}", r.status, r.text);
    assert!(r.text.contains("missing"), "{}", r.text);
    let again = p.invoke("reader", "");
    assert_eq!(again.status(), 200);
    assert_eq!(again.text().unwrap(), "t0k");
    let f: Value = p.get_json("/system/function/reader");
    assert_eq!(f["secrets"], json!(["token"]), "{f}");
}
