//! A pooled lambda-mode watchdog (`VIRGA_POOL=1` with a bind token, as the warm pool starts
//! it): ready with no runtime, refuses calls and wrong binds, and starts the runtime only at
//! the bind, with the function's directory and environment.

use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use virga_testkit::watchdog::{client, wait_for_status, Watchdog};

use crate::{invoke, json};

const TOKEN: &str = "5e1f0c4b2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f";

async fn bind(wd: &Watchdog, token: &str, body: serde_json::Value) -> reqwest::Response {
    client()
        .post(wd.url("/_/virga/bind"))
        .header("x-virga-bind-token", token)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_pooled_watchdog_starts_the_runtime_at_its_bind() {
    let code = tempfile::tempdir().unwrap();
    let code_path = code.path().canonicalize().unwrap();
    std::fs::create_dir(code_path.join("function")).unwrap();
    let fixture = virga_testkit::lambda_fixture_bin();
    let wd = Watchdog::start(&[
        ("mode", "lambda"),
        ("fprocess", fixture.to_str().unwrap()),
        ("LAMBDA_TASK_ROOT", "function"),
        ("VIRGA_POOL", "1"),
        ("VIRGA_BIND_TOKEN", TOKEN),
    ]);
    // Ready for its bind, with no runtime: calls are refused, not held.
    wait_for_status(
        &client(),
        &wd.url("/_/health"),
        200,
        Duration::from_secs(20),
    )
    .await;
    let early = invoke(&wd, &json!({"op": "echo"}), &[]).await;
    assert_eq!(early.status(), 503);
    let bind_body = json!({
        "dir": code_path,
        "env": {"AWS_LAMBDA_FUNCTION_NAME": "bound-fn", "GREETING": "hi"},
    });
    let wrong = bind(&wd, &"0".repeat(64), bind_body.clone()).await;
    assert_eq!(wrong.status(), 403);
    assert!(wrong.headers().get("x-virga-bound").is_none());

    let ok = bind(&wd, TOKEN, bind_body.clone()).await;
    assert_eq!(ok.status(), 200);
    let proof = hex::encode(Sha256::digest(format!("virga-bound:{TOKEN}")));
    assert_eq!(ok.headers()["x-virga-bound"].to_str().unwrap(), proof);
    let (_, env) = json(invoke(&wd, &json!({"op": "env"}), &[]).await).await;
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "bound-fn");
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/bound-fn");
    assert_eq!(env["GREETING"], "hi");
    let root = code_path.join("function");
    assert_eq!(env["cwd"], root.to_str().unwrap());
    assert_eq!(env["LAMBDA_TASK_ROOT"], root.to_str().unwrap());
    // The token and the pool marker are the watchdog's: the function never sees them.
    assert_eq!(env["VIRGA_BIND_TOKEN"], serde_json::Value::Null);
    assert_eq!(env["VIRGA_POOL"], serde_json::Value::Null);
    let (_, echo) = json(invoke(&wd, &json!({"op": "echo"}), &[]).await).await;
    assert_eq!(
        echo["invokedFunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:bound-fn"
    );
    // Bound once: the same bind again is an ordinary call of the function, not a bind.
    let again = bind(&wd, TOKEN, bind_body).await;
    assert!(again.headers().get("x-virga-bound").is_none());
}
