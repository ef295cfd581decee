//! `mode=lambda` against the real `virga-watchdog` binary and real Lambda runtimes: the
//! `virga-lambda-fixture` function on the Rust `lambda_runtime` crate, and small scripts
//! that misbehave during init.

mod init;
mod invoke;
mod platform;
mod pool;
mod runtime_api;
mod url;

use std::time::Duration;

use serde_json::Value;
use virga_testkit::watchdog::{client, wait_for_status, Watchdog};

/// A watchdog running the fixture in lambda mode, with `extra` variables; ready.
async fn fixture(extra: &[(&str, &str)]) -> Watchdog {
    let fixture = virga_testkit::lambda_fixture_bin();
    let mut env = vec![
        ("mode", "lambda"),
        ("fprocess", fixture.to_str().unwrap()),
        ("AWS_LAMBDA_FUNCTION_NAME", "fixture-fn"),
    ];
    env.extend_from_slice(extra);
    let wd = Watchdog::start(&env);
    wait_for_status(
        &client(),
        &wd.url("/_/health"),
        200,
        Duration::from_secs(20),
    )
    .await;
    wd
}

/// A raw invoke of `event` (the Invoke API's request), with `headers`.
async fn invoke(wd: &Watchdog, event: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client()
        .post(wd.url("/"))
        .header("X-Virga-Lambda-Invoke", "1")
        .body(event.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

/// The JSON body of `resp`, with its `X-Amz-Function-Error` header.
async fn json(resp: reqwest::Response) -> (Option<String>, Value) {
    let error = resp
        .headers()
        .get("x-amz-function-error")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (error, value)
}

/// POSTs `body` to `path`, as a raw invoke or a function-URL request.
async fn client_post(wd: &Watchdog, path: &str, body: String, raw: bool) -> reqwest::Response {
    let mut req = client().post(wd.url(path)).body(body);
    if raw {
        req = req.header("X-Virga-Lambda-Invoke", "1");
    }
    req.send().await.unwrap()
}
