//! Runtimes that fail to initialise: calls get the init error, the instance never turns
//! ready, and the runtime is started again with a backoff, not in a hot loop.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use virga_testkit::watchdog::{client, script, Watchdog};

use super::{invoke, json};

/// A runtime that reports an init error through the Runtime API (as a RIC does when the
/// handler cannot be imported) and exits; each start appends a line to `starts`.
const POSTS_INIT_ERROR: &str = r#"
import os, sys, urllib.request
open(sys.argv[1], "a").write("start\n")
base = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"
req = urllib.request.Request(
    base + "/init/error",
    data=b'{"errorMessage": "Unable to import module \'handler\': No module named \'nope\'", "errorType": "Runtime.ImportModuleError"}',
    headers={"Lambda-Runtime-Function-Error-Type": "Runtime.ImportModuleError"},
)
print("init error answered", urllib.request.urlopen(req).status, flush=True)
sys.exit(1)
"#;

fn starts(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Calls get `expected`, health says calls are answered (with that error, so the platform does
/// not hold them until its ready timeout), and over 3 s the runtime starts a few times only.
async fn check_failing_runtime(wd: &Watchdog, counter: &Path, expected: serde_json::Value) {
    let resp = invoke(wd, &json!({"op": "echo"}), &[("X-Call-Id", "init-1")]).await;
    assert_eq!(resp.status(), 200);
    let (error, body) = json(resp).await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(body, expected);
    let health = client().get(wd.url("/_/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let before = starts(counter);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = starts(counter) - before;
    assert!(
        (1..=6).contains(&during),
        "{during} starts in 3 s: no backoff, or no restart"
    );
    // Still failing, with the same error, at once.
    let resp = invoke(wd, &json!({"op": "echo"}), &[("X-Call-Id", "init-1")]).await;
    let (_, again) = json(resp).await;
    assert_eq!(again, expected);
}

#[tokio::test]
async fn a_posted_init_error_fails_the_calls_and_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let py = script(dir.path(), "runtime.py", POSTS_INIT_ERROR);
    let counter = dir.path().join("starts");
    let fprocess = format!("python3 {} {}", py.display(), counter.display());
    let wd = Watchdog::start(&[("mode", "lambda"), ("fprocess", &fprocess)]);
    let expected = json!({
        "errorMessage": "Unable to import module 'handler': No module named 'nope'",
        "errorType": "Runtime.ImportModuleError"
    });
    check_failing_runtime(&wd, &counter, expected).await;
}

#[tokio::test]
async fn a_runtime_that_exits_at_once_fails_the_calls_and_backs_off() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("starts");
    let fprocess = format!("sh -c 'echo start >> {}; exit 2'", counter.display());
    let wd = Watchdog::start(&[("mode", "lambda"), ("fprocess", &fprocess)]);
    let expected = json!({
        "errorType": "Runtime.ExitError",
        "errorMessage": "RequestId: init-1 Error: Runtime exited with error: exit status 2"
    });
    check_failing_runtime(&wd, &counter, expected).await;
}

#[tokio::test]
async fn a_runtime_that_never_asks_for_an_event_is_stopped_after_the_init_limit() {
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("starts");
    let fprocess = format!(
        "sh -c 'echo start >> {}; exec sleep 600'",
        counter.display()
    );
    let wd = Watchdog::start(&[
        ("mode", "lambda"),
        ("fprocess", &fprocess),
        ("exec_timeout", "1s"),
    ]);
    let started = std::time::Instant::now();
    let resp = invoke(&wd, &json!({}), &[("X-Call-Id", "hung-1")]).await;
    let took = started.elapsed();
    let (error, body) = json(resp).await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(
        body,
        json!({
            "errorType": "Sandbox.Timedout",
            "errorMessage": "RequestId: hung-1 Error: Runtime init timed out after 10.00 seconds"
        })
    );
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(15),
        "{took:?}"
    );
    // It was stopped and started again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(starts(&counter) >= 2, "not restarted");
}
