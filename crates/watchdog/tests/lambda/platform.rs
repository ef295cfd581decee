//! A Lambda function deployed on the real platform (`virga up`): the provider gives its
//! runtime the function's name and memory.

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
}
