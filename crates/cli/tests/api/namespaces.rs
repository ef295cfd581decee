//! Namespaces over the API as faas-cli's go-sdk speaks it: namespace CRUD, functions,
//! secrets, logs, async calls and metrics kept per namespace, quotas, and a store written
//! before namespaces existed.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use virga_testkit::{script, Platform};

fn create_ns(p: &Platform, name: &str, annotations: Value) {
    let r = p.send_json(
        Method::POST,
        "/system/namespace/",
        json!({"name": name, "labels": {"team": name}, "annotations": annotations}),
    );
    assert_eq!(r.status, 201, "create {name}: {}", r.text);
}

fn names(v: &Value, key: &str) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f[key].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn namespaces_are_created_read_updated_and_deleted_as_faas_cli_does() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    assert_eq!(p.get_json("/system/namespaces"), json!(["openfaas-fn"]));
    create_ns(&p, "team-a", json!({"virga.quota.functions": "5"}));
    assert_eq!(
        p.get_json("/system/namespaces"),
        json!(["openfaas-fn", "team-a"])
    );
    let got = p.get_json("/system/namespace/team-a");
    assert_eq!(got["name"], "team-a");
    assert_eq!(got["labels"]["team"], "team-a");
    assert_eq!(got["annotations"]["virga.quota.functions"], "5");
    let r = p.send_json(
        Method::PUT,
        "/system/namespace/team-a",
        json!({"name": "team-a", "labels": {"env": "prod"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let got = p.get_json("/system/namespace/team-a");
    assert_eq!(got["labels"], json!({"env": "prod"}));
    assert!(got.get("annotations").is_none(), "{got}");

    // Bad input: a clear 4xx each, and nothing changes.
    for (body, status, says) in [
        (json!({"name": "Team_A"}), 400, "DNS-1123"),
        (json!({"name": "kube-system"}), 400, "reserved"),
        (json!({"name": "openfaas-fn"}), 409, "already exists"),
        (json!({"name": "team-a"}), 409, "already exists"),
        (
            json!({"name": "team-b", "annotations": {"virga.quota.replicas": "many"}}),
            400,
            "virga.quota.replicas",
        ),
        (json!({"name": ""}), 400, "name"),
    ] {
        let r = p.send_json(Method::POST, "/system/namespace/", body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.text);
        assert!(r.text.contains(says), "{body}: {}", r.text);
    }
    let r = p.send_json(
        Method::PUT,
        "/system/namespace/nope",
        json!({"name": "nope"}),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    let r = p.send_json(
        Method::PUT,
        "/system/namespace/team-a",
        json!({"name": "team-z"}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    let r = p.send_json(Method::DELETE, "/system/namespace/openfaas-fn", json!({}));
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        p.get_json("/system/namespaces"),
        json!(["openfaas-fn", "team-a"])
    );

    // Not while it holds a function, unless asked to cascade.
    p.deploy_process("f", "cat", json!({"namespace": "team-a"}));
    p.create_secret_in("s", "v", "team-a");
    let r = p.send_json(Method::DELETE, "/system/namespace/team-a", json!({}));
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("1 functions and 1 secrets"), "{}", r.text);
    assert_eq!(p.invoke("f.team-a", "still here").status(), 200);
    let r = p.send_json(
        Method::DELETE,
        "/system/namespace/team-a?cascade=true",
        json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(p.get_json("/system/namespaces"), json!(["openfaas-fn"]));
    let r = p.invoke("f.team-a", "gone");
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("namespace \"team-a\" not found"));
    // Created again, it is empty: nothing of the old one came back.
    create_ns(&p, "team-a", json!({}));
    assert_eq!(p.get_json("/system/functions?namespace=team-a"), json!([]));
    assert_eq!(p.get_json("/system/secrets?namespace=team-a"), json!([]));
}

#[test]
fn functions_secrets_logs_and_metrics_stay_in_their_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    create_ns(&p, "team-a", json!({}));
    let show = script(
        dir.path(),
        "show.sh",
        "echo \"secret=$(cat \"$secret_mount_path/token\")\"; echo \"from stdout\"; echo logged >&2",
    );
    p.create_secret("token", "default-value");
    p.create_secret_in("token", "team-a-value", "team-a");
    p.deploy_process("show", &show, json!({"secrets": ["token"]}));
    p.deploy_process(
        "show",
        &show,
        json!({"namespace": "team-a", "secrets": ["token"]}),
    );
    // Same name, two functions, each reading its own namespace's secret.
    let default = p.invoke("show", "").text().unwrap();
    assert!(default.starts_with("secret=default-value"), "{default}");
    let a = p.invoke("show.team-a", "").text().unwrap();
    assert!(a.starts_with("secret=team-a-value"), "{a}");
    let a = p.invoke("show.openfaas-fn", "").text().unwrap();
    assert!(a.starts_with("secret=default-value"), "{a}");

    // Reads honour ?namespace= and NAME.NAMESPACE.
    let listed = p.get_json("/system/functions?namespace=team-a");
    assert_eq!(names(&listed, "name"), ["show"]);
    assert_eq!(listed[0]["namespace"], "team-a");
    assert_eq!(
        p.get_json("/system/functions")[0]["namespace"],
        "openfaas-fn"
    );
    assert_eq!(
        p.get_json("/system/function/show?namespace=team-a")["namespace"],
        "team-a"
    );
    assert_eq!(
        p.get_json("/system/function/show.team-a")["namespace"],
        "team-a"
    );
    for path in [
        "/system/functions?namespace=nope",
        "/system/function/show?namespace=nope",
        "/system/secrets?namespace=nope",
        "/system/logs?name=show&namespace=nope",
    ] {
        let r = p.sys(Method::GET, path).send().unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert!(r.text().unwrap().contains("namespace \"nope\" not found"));
    }
    let r = p
        .sys(
            Method::GET,
            "/system/function/show.team-a?namespace=openfaas-fn",
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);

    // Secrets are listed and removed per namespace: removing team-b's... of another
    // namespace never touches the default one's (faas-cli secret remove KEY -n other).
    let secrets = p.get_json("/system/secrets?namespace=team-a");
    assert_eq!(secrets, json!([{"name": "token", "namespace": "team-a"}]));
    create_ns(&p, "other", json!({}));
    let r = p.send_json(
        Method::DELETE,
        "/system/secrets",
        json!({"name": "token", "namespace": "other"}),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(
        p.get_json("/system/secrets"),
        json!([{"name": "token", "namespace": "openfaas-fn"}])
    );
    // A function can only name secrets of its own namespace.
    let r = p.send_json(
        Method::POST,
        "/system/functions",
        json!({"service": "thief", "image": "", "envProcess": show,
               "namespace": "other", "secrets": ["token"]}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.text.contains("does not exist in namespace \"other\""),
        "{}",
        r.text
    );

    // Logs and metrics name the namespace.
    let logged = p.eventually(Duration::from_secs(10), || {
        let text = p
            .sys(Method::GET, "/system/logs?name=show&namespace=team-a")
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["namespace"] == "team-a" && v["name"] == "show"
        })
    });
    assert!(logged, "no team-a log line");
    let metrics = p
        .anon(Method::GET, "/metrics")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("function_name=\"show.team-a\""),
        "no team-a series"
    );
    assert!(metrics.contains("function_name=\"show.openfaas-fn\""));

    // Scale and remove act on one namespace only.
    let r = p.send_json(
        Method::POST,
        "/system/scale-function/show",
        json!({"serviceName": "show", "namespace": "team-a", "replicas": 2}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(
        p.get_json("/system/function/show.team-a")["replicas"],
        json!(2)
    );
    assert_eq!(p.get_json("/system/function/show")["replicas"], json!(1));
    let r = p.send_json(
        Method::DELETE,
        "/system/functions",
        json!({"functionName": "show", "namespace": "team-a"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(p.invoke("show.team-a", "").status(), 404);
    assert!(p
        .invoke("show", "")
        .text()
        .unwrap()
        .starts_with("secret=default"));
}

#[test]
fn async_calls_and_dead_letters_carry_the_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    create_ns(&p, "team-a", json!({}));
    let fail = script(dir.path(), "fail.sh", "echo failing >&2; exit 3");
    p.deploy_process(
        "flaky",
        &fail,
        json!({"namespace": "team-a",
               "annotations": {"com.openfaas.retry.attempts": "1",
                               "com.openfaas.retry.codes": "500"}}),
    );
    let r = p
        .anon(Method::POST, "/async-function/flaky.team-a")
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = p
        .anon(Method::POST, "/async-function/flaky")
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404, "not in the default namespace");
    let dead = || p.get_json("/system/virga/dead-letters?namespace=team-a");
    assert!(
        p.eventually(Duration::from_secs(20), || dead()
            .as_array()
            .is_some_and(|a| a.len() == 1)),
        "{}",
        dead()
    );
    assert_eq!(dead()[0]["function"], "flaky.team-a");
    assert_eq!(
        p.get_json("/system/virga/dead-letters?namespace=openfaas-fn"),
        json!([])
    );
}

#[test]
fn quotas_refuse_deploys_and_scales_beyond_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    create_ns(
        &p,
        "small",
        json!({"virga.quota.functions": "2", "virga.quota.replicas": "3",
               "virga.quota.memory": "640Mi"}),
    );
    let deploy = |name: &str, extra: Value| {
        let mut body = json!({"service": name, "image": "", "envProcess": "cat",
                              "namespace": "small"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        p.send_json(Method::POST, "/system/functions", body)
    };
    let r = deploy("a", json!({"limits": {"memory": "128Mi"}}));
    assert_eq!(r.status, 202, "{}", r.text);
    // 128Mi + 600Mi is more than 640Mi.
    let r = deploy("b", json!({"limits": {"memory": "600Mi"}}));
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("virga.quota.memory"), "{}", r.text);
    let r = deploy("b", json!({"limits": {"memory": "128Mi"}}));
    assert_eq!(r.status, 202, "{}", r.text);
    let r = deploy("c", json!({}));
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("virga.quota.functions"), "{}", r.text);

    let scale = |name: &str, n: u64| {
        p.send_json(
            Method::POST,
            &format!("/system/scale-function/{name}"),
            json!({"serviceName": name, "namespace": "small", "replicas": n}),
        )
    };
    assert_eq!(scale("a", 2).status, 202);
    let r = scale("b", 2);
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("virga.quota.replicas"), "{}", r.text);
    assert_eq!(p.get_json("/system/function/b.small")["replicas"], json!(1));
    // Raising the quota lets it through; the default namespace never had one.
    let r = p.send_json(
        Method::PUT,
        "/system/namespace/small",
        json!({"annotations": {"virga.quota.replicas": "4"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(scale("b", 2).status, 202);
    for i in 0..3 {
        p.deploy_process(&format!("free{i}"), "cat", json!({}));
    }
    let r = p.send_json(
        Method::PUT,
        "/system/namespace/small",
        json!({"annotations": {"virga.quota.memory": "lots"}}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("virga.quota.memory"), "{}", r.text);
}

#[test]
fn a_store_from_before_namespaces_opens_with_its_functions_in_the_default_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    {
        // What the previous version wrote: functions keyed by bare name, no namespaces table.
        let functions: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("functions");
        let db = redb::Database::create(data.join("state.redb")).unwrap();
        let f = json!({
            "deployment": {"service": "old", "image": "", "envProcess": "cat",
                           "namespace": "openfaas-fn"},
            "created_at": "2026-05-01T12:00:00Z",
            "replicas": 1,
        });
        let tx = db.begin_write().unwrap();
        tx.open_table(functions)
            .unwrap()
            .insert("old", serde_json::to_vec(&f).unwrap().as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let p = Platform::start(&data);
    assert_eq!(p.invoke("old", "kept").text().unwrap(), "kept");
    assert_eq!(p.invoke("old.openfaas-fn", "kept").text().unwrap(), "kept");
    assert_eq!(names(&p.get_json("/system/functions"), "name"), ["old"]);
    create_ns(&p, "team-a", json!({}));
    p.deploy_process("old", "cat", json!({"namespace": "team-a"}));
    assert_eq!(names(&p.get_json("/system/functions"), "name"), ["old"]);
    assert_eq!(
        p.get_json("/system/functions?namespace=team-a")[0]["namespace"],
        "team-a"
    );
}
