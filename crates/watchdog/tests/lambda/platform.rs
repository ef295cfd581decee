//! Lambda functions deployed on the real platform (`virga up`): the provider gives the
//! runtime its function's name and memory; a relative `LAMBDA_TASK_ROOT` (as the templates
//! set it) is the bundle's directory of that name, where the runtime starts.

use serde_json::{json, Value};
use virga_testkit::Platform;

#[test]
fn the_provider_gives_the_runtime_its_function_name_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let fixture = virga_testkit::lambda_fixture_bin();
    p.deploy_process(
        "lam",
        fixture.to_str().unwrap(),
        json!({"envVars": {"mode": "lambda"}, "limits": {"memory": "300Mi"}}),
    );
    let resp = p
        .anon(reqwest::Method::GET, "/function/lam/env")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let env: Value = resp.json().unwrap();
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "lam");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "300");
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/lam");

    // A bundle whose code is under function/, without limits: the provider's default memory.
    p.deploy_bundle(
        "lam-bundle",
        &[("function/handler.txt", "code")],
        fixture.to_str().unwrap(),
        json!({"envVars": {"mode": "lambda", "LAMBDA_TASK_ROOT": "function"}}),
    );
    let env: Value = p
        .anon(reqwest::Method::GET, "/function/lam-bundle/env")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let root = env["LAMBDA_TASK_ROOT"].as_str().unwrap();
    assert!(
        root.starts_with('/') && root.ends_with("/function"),
        "{env}"
    );
    assert_eq!(env["cwd"], root);
    assert!(std::path::Path::new(root).join("handler.txt").is_file());
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "lam-bundle");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256");
}

/// A Runtime API client with nothing but python3's standard library, so it runs in a
/// sandbox (which sees the host's /usr, not the test's binaries).
const SANDBOXED_RUNTIME: &str = r#"
import json, os, urllib.request
api = os.environ["AWS_LAMBDA_RUNTIME_API"]
base = "http://" + api + "/2018-06-01/runtime/invocation/"
while True:
    with urllib.request.urlopen(base + "next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(r.read())
    answer = {"statusCode": 200, "body": json.dumps({"api": api, "path": event["rawPath"]})}
    urllib.request.urlopen(base + rid + "/response", data=json.dumps(answer).encode()).read()
"#;

#[test]
fn a_lambda_function_runs_in_a_runc_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(dir.path(), &[]);
    p.deploy_bundle(
        "lam-runc",
        &[("runtime.py", SANDBOXED_RUNTIME)],
        "python3 runtime.py",
        json!({"envVars": {"mode": "lambda"}}),
    );
    let resp = p
        .anon(reqwest::Method::GET, "/function/lam-runc/some/path")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().unwrap();
    assert_eq!(body["path"], "/some/path");
    // The Runtime API is on the sandbox's own loopback.
    assert!(
        body["api"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{body}"
    );
}
