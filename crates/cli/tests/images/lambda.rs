//! Lambda container images (issue 14) run under the platform's watchdog in `mode=lambda`: an
//! image built like AWS's (`/lambda-entrypoint.sh` running `/var/runtime/bootstrap`, here the
//! Rust `lambda_runtime` fixture, with `Cmd` the handler) is pushed to a real docker-registry
//! and deployed on a real `virga up --isolation runc`; it is called over HTTP (function-URL
//! events) and through the Invoke API with the real boto3.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use virga_testkit::registry::{lambda_config, push_lambda, Registry};
use virga_testkit::{boto3, Platform, PASSWORD};

fn deploy(p: &Platform, method: Method, body: Value) -> virga_testkit::Answer {
    p.send_json(method, "/system/functions", body)
}

/// GET /function/NAME/PATH: status and body.
fn get(p: &Platform, name: &str, path: &str) -> (u16, String) {
    let r = p
        .anon(Method::GET, &format!("/function/{name}{path}"))
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// What the runtime of `name` sees (the fixture's `env` op, as a function-URL call).
fn runtime_env(p: &Platform, name: &str) -> Value {
    let (status, text) = get(p, name, "/env");
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn logs(p: &Platform, name: &str) -> String {
    let r = p
        .sys(Method::GET, &format!("/system/logs?name={name}"))
        .send()
        .unwrap();
    r.text().unwrap()
}

#[test]
fn a_lambda_image_runs_its_entrypoint_under_the_watchdog_for_urls_and_the_invoke_api() {
    let reg = Registry::start(None);
    push_lambda(&reg, "lam:1", lambda_config(false, Some("app")));
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::start_runc(dir.path(), &[]);
    let r = deploy(
        &p,
        Method::POST,
        json!({"service": "limg", "image": reg.image("lam:1"),
               "envVars": {"mode": "lambda", "exec_timeout": "2s"},
               "readOnlyRootFilesystem": true}),
    );
    assert_eq!(r.status, 202, "{}", r.text);

    // The runtime is the image's entrypoint, with the Runtime API and the image's settings.
    let env = runtime_env(&p, "limg");
    assert_eq!(env["_HANDLER"], "app.handler", "{env}");
    assert_eq!(env["LAMBDA_TASK_ROOT"], "/var/task", "{env}");
    assert_eq!(env["cwd"], "/var/task", "{env}");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "limg", "{env}");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_TIMEOUT"], "2", "{env}");
    let api = env["AWS_LAMBDA_RUNTIME_API"].as_str().unwrap();
    assert!(api.starts_with("127.0.0.1:"), "{env}");

    // A function-URL event, its query string and path.
    let (status, text) = get(&p, "limg", "/echo?x=1");
    assert_eq!(status, 200, "{text}");
    let event: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(event["rawPath"], "/echo", "{event}");
    assert_eq!(event["rawQueryString"], "x=1", "{event}");
    assert_eq!(get(&p, "limg", "/error").0, 502);

    // The Invoke API: a result, a handler error, a timeout; then a start from zero.
    let script = r#"
r = c.invoke(FunctionName="limg", Payload=json.dumps({"op": "echo", "x": 1}))
out["echo"] = [r["StatusCode"], r.get("FunctionError"), json.loads(payload(r))]
r = c.invoke(FunctionName="limg", Payload=json.dumps({"op": "error", "type": "ValueError", "message": "bad"}))
out["raise"] = [r.get("FunctionError"), json.loads(payload(r))]
r = c.invoke(FunctionName="limg", Payload=json.dumps({"op": "sleep", "ms": 4000}))
out["slow"] = [r.get("FunctionError"), json.loads(payload(r))]
r = c.invoke(FunctionName="limg", Payload=json.dumps({"op": "echo", "after": "timeout"}))
out["after"] = [r.get("FunctionError"), json.loads(payload(r))]
"#;
    let out = boto3::run(dir.path(), &p.url, "admin", PASSWORD, script);
    assert_eq!(out["echo"][0], 200, "{out}");
    assert_eq!(out["echo"][1], Value::Null, "{out}");
    assert_eq!(out["echo"][2]["event"], json!({"op": "echo", "x": 1}));
    assert_eq!(
        out["echo"][2]["invokedFunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:limg"
    );
    assert_eq!(out["raise"][0], "Unhandled", "{out}");
    assert_eq!(out["raise"][1]["errorType"], "ValueError", "{out}");
    assert_eq!(out["slow"][0], "Unhandled", "{out}");
    assert_eq!(out["slow"][1]["errorType"], "Sandbox.Timedout", "{out}");
    // The runtime was started again after the timeout: a new process answers.
    assert_eq!(out["after"][0], Value::Null, "{out}");
    assert_ne!(out["after"][1]["pid"], out["echo"][2]["pid"], "{out}");

    p.scale_to_zero("limg");
    let out = boto3::run(
        dir.path(),
        &p.url,
        "admin",
        PASSWORD,
        r#"
r = c.invoke(FunctionName="limg", Payload=json.dumps({"op": "echo", "cold": True}))
out["cold"] = [r["StatusCode"], r.get("FunctionError"), json.loads(payload(r))]
"#,
    );
    assert_eq!(out["cold"][0], 200, "{out}");
    assert_eq!(out["cold"][2]["event"], json!({"op": "echo", "cold": true}));
    // The runtime's own output (one line per start) is the function's log.
    assert!(
        p.eventually(Duration::from_secs(5), || logs(&p, "limg")
            .matches("fixture init")
            .count()
            >= 3),
        "{}",
        logs(&p, "limg")
    );

    // Stopped, the platform leaves no watchdog tree, mount or sandbox behind.
    assert!(p.terminate().success());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let data = dir.path().to_string_lossy().into_owned();
    assert!(!mounts.contains(&data), "{mounts}");
    assert!(!dir.path().join("sandbox/watchdog").exists());
    assert_eq!(
        virga_testkit::sandbox_leftovers(dir.path()),
        Vec::<String>::new()
    );
}

#[test]
fn an_unmarked_lambda_image_fails_clearly_and_a_marker_or_aws_env_runs_it() {
    let reg = Registry::start(None);
    push_lambda(&reg, "plain:1", lambda_config(false, None));
    push_lambda(&reg, "aws:1", lambda_config(true, None));
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(dir.path(), &["--ready-timeout", "5"]);

    // Without a marker the image runs as any image: its entrypoint, without a Runtime API,
    // exits saying so, and a call gets a 503 naming the exit (not a wait without end).
    let r = deploy(
        &p,
        Method::POST,
        json!({"service": "plain", "image": reg.image("plain:1")}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let (status, text) = get(&p, "plain", "/env");
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("exited before it listened"), "{text}");
    assert!(
        logs(&p, "plain").contains("AWS_LAMBDA_RUNTIME_API is not set"),
        "{}",
        logs(&p, "plain")
    );

    // A bad annotation is a 400 naming it; `virga.lambda: "true"` makes it a Lambda image.
    let r = deploy(
        &p,
        Method::PUT,
        json!({"service": "plain", "image": reg.image("plain:1"),
               "annotations": {"virga.lambda": "yes"}}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("virga.lambda"), "{}", r.text);
    let r = deploy(
        &p,
        Method::PUT,
        json!({"service": "plain", "image": reg.image("plain:1"),
               "annotations": {"virga.lambda": "true"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let env = runtime_env(&p, "plain");
    assert_eq!(env["_HANDLER"], "app.handler", "{env}");
    // Without LAMBDA_RUNTIME_DIR in the image, the working directory is the runtime's.
    assert_eq!(env["LAMBDA_RUNTIME_DIR"], "/var/task", "{env}");

    // AWS's base images' Env (LAMBDA_TASK_ROOT and LAMBDA_RUNTIME_DIR) marks one by itself.
    let r = deploy(
        &p,
        Method::POST,
        json!({"service": "aws", "image": reg.image("aws:1")}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let env = runtime_env(&p, "aws");
    assert_eq!(env["_HANDLER"], "app.handler", "{env}");
    assert_eq!(env["LAMBDA_RUNTIME_DIR"], "/var/runtime", "{env}");
    // ... unless the deployment says it is not one.
    let r = deploy(
        &p,
        Method::PUT,
        json!({"service": "aws", "image": reg.image("aws:1"),
               "annotations": {"virga.lambda": "false"}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(get(&p, "aws", "/env").0, 503);
}
