//! End-to-end tests of the OpenFaaS gateway API against the real `virga up`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use virga_testkit::{script, Platform};

#[test]
fn system_routes_need_credentials_and_health_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let r = p.anon(Method::GET, "/healthz").send().unwrap();
    assert_eq!(r.status(), 200);
    for path in ["/system/functions", "/system/info", "/system/secrets"] {
        let r = p.anon(Method::GET, path).send().unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        let r = p
            .http
            .get(format!("{}{path}", p.url))
            .basic_auth("admin", Some("wrong"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "{path} wrong password");
    }
    let info = p.get_json("/system/info");
    assert_eq!(info["provider"]["orchestration"], "local");
    assert_eq!(info["arch"], std::env::consts::ARCH);
    assert!(!info["version"]["release"].as_str().unwrap().is_empty());
    let ns = p.get_json("/system/namespaces");
    assert_eq!(ns, json!(["openfaas-fn"]));
}

#[test]
fn deploy_invoke_list_update_delete() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    p.deploy_process(
        "echo",
        "cat",
        json!({"labels": {"team": "a"}, "envVars": {"A": "1"}, "limits": {"memory": "128M"}}),
    );
    let r = p.invoke("echo", "hello virga");
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-call-id"));
    let secs: f64 = r.headers()["x-duration-seconds"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs > 0.0);
    assert_eq!(r.text().unwrap(), "hello virga");

    // A caller's X-Call-Id is kept.
    let r = p
        .anon(Method::PUT, "/function/echo.openfaas-fn")
        .header("X-Call-Id", "my-call")
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.headers()["x-call-id"], "my-call");

    let list: Vec<Value> = p
        .sys(Method::GET, "/system/functions")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list.len(), 1);
    let f = &list[0];
    assert_eq!(f["name"], "echo");
    assert_eq!(f["namespace"], "openfaas-fn");
    assert_eq!(f["envProcess"], "cat");
    assert_eq!(f["labels"]["team"], "a");
    assert_eq!(f["envVars"]["A"], "1");
    assert_eq!(f["limits"]["memory"], "128M");
    assert_eq!(f["replicas"], 1);
    assert_eq!(f["availableReplicas"], 1);
    assert_eq!(f["invocationCount"], 2.0);
    assert!(f["createdAt"].as_str().unwrap().starts_with("20"));

    let one = p.get_json("/system/function/echo");
    assert_eq!(one["name"], "echo");

    // Duplicate POST: 409 with a message; PUT updates; PUT of a missing one: 404.
    let r = p.send_json(
        Method::POST,
        "/system/functions",
        json!({"service": "echo", "envProcess": "cat"}),
    );
    assert_eq!(r.status, 409);
    assert!(r.text.contains("already exists"));
    let r = p.send_json(
        Method::PUT,
        "/system/functions",
        json!({"service": "echo", "envProcess": "wc -c"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(p.invoke("echo", "12345").text().unwrap().trim(), "5");
    let r = p.send_json(
        Method::PUT,
        "/system/functions",
        json!({"service": "nope", "envProcess": "cat"}),
    );
    assert_eq!(r.status, 404);

    let r = p.send_json(
        Method::DELETE,
        "/system/functions",
        json!({"functionName": "echo"}),
    );
    assert_eq!(r.status, 200);
    let r = p.send_json(
        Method::DELETE,
        "/system/functions",
        json!({"functionName": "echo"}),
    );
    assert_eq!(r.status, 404);
    let r = p.invoke("echo", "x");
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("echo"));
}

#[test]
fn method_path_query_and_headers_reach_the_function() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    p.deploy_process("env", "env", json!({}));
    let r = p
        .anon(Method::PATCH, "/function/env/some/path?x=1&y=two")
        .header("X-Custom", "abc")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = r.text().unwrap();
    for want in [
        "Http_Method=PATCH",
        "Http_Path=/some/path",
        "Http_Query=x=1&y=two",
        "Http_X_Custom=abc",
        "Http_X_Call_Id=",
        "Http_X_Start_Time=",
    ] {
        assert!(out.contains(want), "missing {want} in:\n{out}");
    }
    // Status and headers from the function pass through.
    let tmp = tempfile::tempdir().unwrap();
    let s = script(tmp.path(), "fail.sh", "echo 'boom: bad input' >&2; exit 3");
    p.deploy_process("fail", &s, json!({}));
    let r = p.invoke("fail", "");
    assert_eq!(r.status(), 500);
    assert!(r.text().unwrap().contains("boom"));
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_with(dir.path(), &["--max-body-bytes", "1024"]);
    for bad in ["Hello", "..", "a/b", "a_b", &"x".repeat(64), "-a"] {
        let r = p.send_json(
            Method::POST,
            "/system/functions",
            json!({"service": bad, "envProcess": "cat"}),
        );
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.text.contains("service"), "{bad}");
    }
    let r = p
        .sys(Method::POST, "/system/functions")
        .body("{not json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("invalid JSON"));
    let r = p.send_json(Method::POST, "/system/functions", json!({"image": "x"}));
    assert_eq!(r.status, 400);
    assert!(r.text.contains("service"));
    let r = p.send_json(
        Method::POST,
        "/system/functions",
        json!({"service": "x", "envProcess": "cat", "secrets": ["missing"]}),
    );
    assert_eq!(r.status, 400);
    assert!(r.text.contains("missing"));
    let r = p.send_json(
        Method::POST,
        "/system/functions",
        json!({"service": "x", "image": "nginx:latest"}),
    );
    assert_eq!(r.status, 400);
    let r = p.send_json(
        Method::POST,
        "/system/functions",
        json!({"service": "x", "envProcess": "cat", "labels": {"com.openfaas.scale.min": "lots"}}),
    );
    assert_eq!(r.status, 400);
    assert!(r.text.contains("com.openfaas.scale.min"));

    // Oversized bodies: 413, declared or streamed.
    p.deploy_process("echo", "cat", json!({}));
    let r = p.invoke("echo", &"x".repeat(2000));
    assert_eq!(r.status(), 413);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![b'y'; 600])).collect();
    let r = p
        .anon(Method::POST, "/function/echo")
        .body(reqwest::blocking::Body::new(ChunkReader(
            chunks.into_iter(),
        )))
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(p.invoke("echo", "small").text().unwrap(), "small");

    // Unknown function and bad names on the invoke path.
    let r = p.invoke("ghost", "");
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("ghost"));
    assert_eq!(p.invoke("Ghost", "").status(), 400);
    assert_eq!(p.invoke("echo.other-ns", "").status(), 404);
}

/// A body without Content-Length: reqwest sends it chunked.
struct ChunkReader(std::vec::IntoIter<Result<Vec<u8>, std::io::Error>>);

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.0.next() {
            Some(Ok(c)) => {
                buf[..c.len()].copy_from_slice(&c);
                Ok(c.len())
            }
            Some(Err(e)) => Err(e),
            None => Ok(0),
        }
    }
}

#[test]
fn crashing_and_slow_functions_do_not_hurt_others() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    p.deploy_process("echo", "cat", json!({}));
    let slow = script(tmp.path(), "slow.sh", "sleep 30");
    p.deploy_process("slow", &slow, json!({"envVars": {"exec_timeout": "300ms"}}));
    let crash = script(tmp.path(), "crash.sh", "kill -9 $$");
    p.deploy_process("crash", &crash, json!({}));

    let started = std::time::Instant::now();
    let r = p.invoke("slow", "");
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(10));
    let r = p.invoke("crash", "");
    assert_eq!(r.status(), 500);
    assert!(!r.text().unwrap().is_empty());
    assert_eq!(p.invoke("echo", "still here").text().unwrap(), "still here");
}

#[test]
fn scale_to_zero_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    p.deploy_process("echo", "cat", json!({}));
    let r = p.send_json(
        Method::POST,
        "/system/scale-function/echo",
        json!({"serviceName": "echo", "replicas": 0}),
    );
    assert_eq!(r.status, 202);
    let status = |p: &Platform| -> Value {
        p.sys(Method::GET, "/system/function/echo")
            .send()
            .unwrap()
            .json()
            .unwrap()
    };
    assert!(
        p.eventually(Duration::from_secs(10), || status(&p)["availableReplicas"]
            == 0)
    );
    assert_eq!(status(&p)["replicas"], 0);
    // A call at zero is held until an instance is ready.
    assert_eq!(p.invoke("echo", "back").text().unwrap(), "back");
    assert_eq!(status(&p)["replicas"], 1);
    let r = p.send_json(
        Method::POST,
        "/system/scale-function/echo",
        json!({"serviceName": "echo", "replicas": 3}),
    );
    assert_eq!(r.status, 202);
    assert!(
        p.eventually(Duration::from_secs(10), || status(&p)["availableReplicas"]
            == 3)
    );
    let r = p.send_json(
        Method::POST,
        "/system/scale-function/ghost",
        json!({"serviceName": "ghost", "replicas": 1}),
    );
    assert_eq!(r.status, 404);
}

#[test]
fn secrets_are_write_only_and_reach_only_listed_functions() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    assert_eq!(
        p.send_json(
            Method::POST,
            "/system/secrets",
            json!({"name": "api-key", "value": "s3cr3t"})
        )
        .status,
        201
    );
    assert_eq!(
        p.send_json(
            Method::POST,
            "/system/secrets",
            json!({"name": "raw", "rawValue": "AAEC"})
        )
        .status,
        201
    );
    assert_eq!(
        p.send_json(
            Method::POST,
            "/system/secrets",
            json!({"name": "api-key", "value": "again"})
        )
        .status,
        409
    );
    let list = p
        .sys(Method::GET, "/system/secrets")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        list.contains("api-key") && !list.contains("s3cr3t"),
        "{list}"
    );
    assert_eq!(
        p.send_json(
            Method::PUT,
            "/system/secrets",
            json!({"name": "api-key", "value": "n3w"})
        )
        .status,
        200
    );

    let show = script(
        tmp.path(),
        "show.sh",
        "cat \"$secret_mount_path/api-key\"; echo; ls \"$secret_mount_path\"; stat -c %a \"$secret_mount_path/api-key\"",
    );
    p.deploy_process("reader", &show, json!({"secrets": ["api-key"]}));
    let out = p.invoke("reader", "").text().unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, vec!["n3w", "api-key", "600"], "{out}");

    assert_eq!(
        p.send_json(Method::DELETE, "/system/secrets", json!({"name": "raw"}))
            .status,
        200
    );
    assert_eq!(
        p.send_json(Method::DELETE, "/system/secrets", json!({"name": "raw"}))
            .status,
        404
    );
    assert_eq!(
        p.send_json(
            Method::POST,
            "/system/secrets",
            json!({"name": "Bad Name", "value": "x"})
        )
        .status,
        400
    );
}

#[test]
fn state_survives_sigterm_and_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::start(dir.path());
    p.sys(Method::POST, "/system/secrets")
        .json(&json!({"name": "k", "value": "v"}))
        .send()
        .unwrap();
    p.deploy_process("echo", "cat", json!({"secrets": ["k"]}));
    p.deploy_process("count", "wc -c", json!({}));
    assert_eq!(p.invoke("echo", "one").text().unwrap(), "one");

    p.kill9();
    p.restart();
    assert_eq!(p.invoke("echo", "two").text().unwrap(), "two");
    assert_eq!(p.invoke("count", "abc").text().unwrap().trim(), "3");
    let secrets = p
        .sys(Method::GET, "/system/secrets")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(secrets.contains("\"k\""));

    let status = p.terminate();
    assert!(status.success(), "{status:?}");
    p.restart();
    assert_eq!(p.invoke("echo", "three").text().unwrap(), "three");
    let list: Vec<Value> = p
        .sys(Method::GET, "/system/functions")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(list.len(), 2);
}
