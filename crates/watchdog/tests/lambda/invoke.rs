//! Raw invokes (`X-Virga-Lambda-Invoke: 1`): results, handler errors, timeouts, crashes,
//! payload limits, the log tail, the runtime's environment and one event at a time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{json, Value};

use super::{fixture, invoke, json};

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn raw_invoke_passes_the_event_and_context_through() {
    let wd = fixture(&[("exec_timeout", "30s")]).await;
    let context = base64::engine::general_purpose::STANDARD.encode(r#"{"custom":{"k":"v"}}"#);
    let before = epoch_ms();
    let resp = invoke(
        &wd,
        &json!({"op": "echo", "n": [1, 2, {"deep": "é"}]}),
        &[("X-Call-Id", "call-42"), ("X-Amz-Client-Context", &context)],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-amzn-requestid"], "call-42");
    let (error, body) = json(resp).await;
    assert_eq!(error, None);
    assert_eq!(
        body["event"],
        json!({"op": "echo", "n": [1, 2, {"deep": "é"}]})
    );
    assert_eq!(body["requestId"], "call-42");
    assert_eq!(
        body["invokedFunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:fixture-fn"
    );
    assert_eq!(body["clientContext"]["custom"], json!({"k": "v"}));
    let deadline = body["deadline"].as_u64().unwrap();
    assert!(
        deadline >= before + 29_000 && deadline <= epoch_ms() + 30_000,
        "deadline {deadline} is not about 30 s from {before}"
    );
    let trace = body["traceId"].as_str().unwrap();
    let parts: Vec<&str> = trace.split(';').collect();
    assert!(
        parts[0].starts_with("Root=1-") && parts[0].len() == 7 + 8 + 1 + 24,
        "{trace}"
    );
    assert!(
        parts[1].starts_with("Parent=") && parts[2] == "Sampled=0",
        "{trace}"
    );

    // Without an X-Call-Id the watchdog makes a request id up.
    let resp = invoke(&wd, &json!({"op": "echo"}), &[]).await;
    let id = resp.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_owned();
    let (_, body) = json(resp).await;
    assert_eq!(body["requestId"], id);
    assert_eq!(id.len(), 36, "{id}");

    // A client context that is not base64 is the caller's mistake.
    let resp = invoke(&wd, &json!({}), &[("X-Amz-Client-Context", "%%%")]).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.headers()["x-amzn-errortype"],
        "InvalidRequestContentException"
    );
}

#[tokio::test]
async fn calls_beyond_max_inflight_are_429() {
    let wd = fixture(&[("max_inflight", "1")]).await;
    let slow = {
        let req = virga_testkit::watchdog::client()
            .post(wd.url("/"))
            .header("X-Virga-Lambda-Invoke", "1")
            .body(json!({"op": "sleep", "ms": 1000}).to_string());
        tokio::spawn(async move { req.send().await.unwrap().status() })
    };
    // Wait until the slow call is in the runtime (its sleep started).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = invoke(&wd, &json!({"op": "echo"}), &[]).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(slow.await.unwrap(), 200);
    let resp = invoke(&wd, &json!({"op": "echo"}), &[]).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn handler_error_is_unhandled_with_its_error_type() {
    let wd = fixture(&[]).await;
    let resp = invoke(
        &wd,
        &json!({"op": "error", "type": "ValueError", "message": "no such thing"}),
        &[],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let (error, body) = json(resp).await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(body["errorType"], "ValueError");
    assert_eq!(body["errorMessage"], "no such thing");
    // The runtime carries on.
    let (error, _) = json(invoke(&wd, &json!({"op": "echo"}), &[]).await).await;
    assert_eq!(error, None);
}

#[tokio::test]
async fn timeout_answers_sandbox_timedout_and_restarts_the_runtime() {
    let wd = fixture(&[("exec_timeout", "1s")]).await;
    let (_, first) = json(invoke(&wd, &json!({"op": "echo"}), &[]).await).await;
    let started = Instant::now();
    let resp = invoke(
        &wd,
        &json!({"op": "sleep", "ms": 20_000}),
        &[("X-Call-Id", "slow-1")],
    )
    .await;
    let took = started.elapsed();
    let (error, body) = json(resp).await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(
        body,
        json!({
            "errorType": "Sandbox.Timedout",
            "errorMessage": "RequestId: slow-1 Error: Task timed out after 1.00 seconds"
        })
    );
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(5),
        "{took:?}"
    );
    // The next call runs on a new runtime process (init ran again).
    let (error, after) = json(invoke(&wd, &json!({"op": "echo"}), &[]).await).await;
    assert_eq!(error, None, "{after}");
    assert_ne!(after["pid"], first["pid"]);
    assert!(
        !pid_alive(first["pid"].as_i64().unwrap()),
        "the old runtime still runs"
    );
}

fn pid_alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn crash_mid_invocation_is_runtime_exit_error_and_recovers() {
    let wd = fixture(&[]).await;
    let (_, first) = json(invoke(&wd, &json!({"op": "echo"}), &[]).await).await;
    let resp = invoke(&wd, &json!({"op": "crash"}), &[("X-Call-Id", "crash-1")]).await;
    assert_eq!(resp.status(), 200);
    let (error, body) = json(resp).await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(
        body,
        json!({
            "errorType": "Runtime.ExitError",
            "errorMessage": "RequestId: crash-1 Error: Runtime exited with error: exit status 3"
        })
    );
    let (error, after) = json(invoke(&wd, &json!({"op": "echo"}), &[]).await).await;
    assert_eq!(error, None, "{after}");
    assert_ne!(after["pid"], first["pid"]);
}

#[tokio::test]
async fn request_over_6_mib_is_413() {
    let wd = fixture(&[]).await;
    let big = format!("\"{}\"", "x".repeat(7 << 20));
    let resp = super::client_post(&wd, "/", big.clone(), true).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(
        resp.headers()["x-amzn-errortype"],
        "RequestEntityTooLargeException"
    );
    let (_, body) = json(resp).await;
    assert_eq!(
        body,
        json!({"Type": "User", "message": "Request must be smaller than 6291456 bytes for the InvokeFunction operation"})
    );
    // The same for a function-URL request; and exactly 6 MiB still goes through.
    let resp = super::client_post(&wd, "/echo", big, false).await;
    assert_eq!(resp.status(), 413);
    let head = r#"{"op":"big","bytes":10,"pad":""#;
    let limit = format!("{head}{}\"}}", "y".repeat(6_291_456 - head.len() - 2));
    assert_eq!(limit.len(), 6_291_456);
    let resp = super::client_post(&wd, "/", limit, true).await;
    assert_eq!(resp.status(), 200);
    let (error, body) = json(resp).await;
    assert_eq!(error, None);
    assert_eq!(body, json!("xxxxxxxxxx"));
}

#[tokio::test]
async fn response_over_6_mib_is_function_response_size_too_large() {
    let wd = fixture(&[]).await;
    let resp = invoke(&wd, &json!({"op": "big", "bytes": 7 << 20}), &[]).await;
    assert_eq!(resp.status(), 200);
    let (error, body) = json(resp).await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(
        body,
        json!({
            "errorType": "Function.ResponseSizeTooLarge",
            "errorMessage": "Response payload size exceeded maximum allowed payload size (6291556 bytes)."
        })
    );
    // Just under the limit is a result.
    let resp = invoke(&wd, &json!({"op": "big", "bytes": 6_000_000}), &[]).await;
    let (error, body) = json(resp).await;
    assert_eq!(error, None);
    assert_eq!(body.as_str().map(str::len), Some(6_000_000));
}

#[tokio::test]
async fn log_tail_has_the_lines_the_handler_printed() {
    let wd = fixture(&[]).await;
    let lines = json!(["first line", "second: ünïcode", "third"]);
    let resp = invoke(
        &wd,
        &json!({"op": "print", "lines": lines}),
        &[("X-Amz-Log-Type", "Tail"), ("X-Call-Id", "tail-1")],
    )
    .await;
    let log = resp.headers()["x-amz-log-result"]
        .to_str()
        .unwrap()
        .to_owned();
    let log = base64::engine::general_purpose::STANDARD
        .decode(log)
        .unwrap();
    let log = String::from_utf8(log).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines[0], "START RequestId: tail-1 Version: $LATEST",
        "{log}"
    );
    assert_eq!(
        lines[1..4],
        ["first line", "second: ünïcode", "third"],
        "{log}"
    );
    assert_eq!(lines[4], "END RequestId: tail-1", "{log}");
    assert!(
        lines[5].starts_with("REPORT RequestId: tail-1\tDuration: "),
        "{log}"
    );
    assert!(lines[5].contains("\tMemory Size: 128 MB"), "{log}");
    // Only a call that asks gets it.
    let resp = invoke(&wd, &json!({"op": "print", "lines": ["x"]}), &[]).await;
    assert!(!resp.headers().contains_key("x-amz-log-result"));
}

#[tokio::test]
async fn the_runtime_sees_the_lambda_environment() {
    let root = tempfile::tempdir().unwrap();
    let root_path = root.path().canonicalize().unwrap();
    let wd = fixture(&[
        ("exec_timeout", "2500ms"),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
        ("AWS_REGION", "eu-west-1"),
        ("LAMBDA_TASK_ROOT", root_path.to_str().unwrap()),
    ])
    .await;
    let (_, env) = json(invoke(&wd, &json!({"op": "env"}), &[]).await).await;
    assert_eq!(env["AWS_LAMBDA_FUNCTION_NAME"], "fixture-fn");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_VERSION"], "$LATEST");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"], "256");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_TIMEOUT"], "3");
    assert_eq!(env["AWS_LAMBDA_LOG_GROUP_NAME"], "/aws/lambda/fixture-fn");
    assert!(env["AWS_LAMBDA_LOG_STREAM_NAME"]
        .as_str()
        .unwrap()
        .contains("/[$LATEST]"));
    assert!(env["AWS_LAMBDA_RUNTIME_API"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(env["AWS_REGION"], "eu-west-1");
    assert_eq!(env["AWS_DEFAULT_REGION"], "eu-west-1");
    assert_eq!(env["AWS_EXECUTION_ENV"], Value::Null);
    assert_eq!(env["_HANDLER"], "handler.handler");
    assert_eq!(env["LAMBDA_TASK_ROOT"], root_path.to_str().unwrap());
    assert_eq!(env["cwd"], root_path.to_str().unwrap());
    assert_eq!(env["TZ"], ":UTC");
    drop(wd);

    // The function's own values win (but not over the Runtime API's address).
    let wd = fixture(&[
        ("_HANDLER", "app.main"),
        ("AWS_LAMBDA_RUNTIME_API", "10.0.0.1:9"),
    ])
    .await;
    let (_, env) = json(invoke(&wd, &json!({"op": "env"}), &[]).await).await;
    assert_eq!(env["_HANDLER"], "app.main");
    assert_eq!(env["AWS_REGION"], "us-east-1");
    assert_eq!(env["AWS_LAMBDA_FUNCTION_TIMEOUT"], "10");
    assert!(env["AWS_LAMBDA_RUNTIME_API"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

/// A Runtime API client in Python whose three threads all poll `/next` at once: only the
/// watchdog keeps their events apart.
const GREEDY_RUNTIME: &str = r#"
import json, os, threading, time, urllib.request
base = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime"
def loop():
    while True:
        with urllib.request.urlopen(base + "/invocation/next") as r:
            rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
            event = json.loads(r.read())
        start = time.time() * 1000
        time.sleep(event["ms"] / 1000)
        body = json.dumps({"start": start, "end": time.time() * 1000}).encode()
        req = urllib.request.Request(base + "/invocation/" + rid + "/response", data=body)
        urllib.request.urlopen(req).read()
for _ in range(3):
    threading.Thread(target=loop, daemon=True).start()
threading.Event().wait()
"#;

#[tokio::test]
async fn concurrent_calls_reach_the_runtime_one_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let script = virga_testkit::watchdog::script(dir.path(), "greedy.py", GREEDY_RUNTIME);
    let fprocess = format!("python3 {}", script.display());
    let wd =
        virga_testkit::watchdog::Watchdog::start(&[("mode", "lambda"), ("fprocess", &fprocess)]);
    let c = virga_testkit::watchdog::client();
    virga_testkit::watchdog::wait_for_status(
        &c,
        &wd.url("/_/health"),
        200,
        Duration::from_secs(20),
    )
    .await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let req = c
                .post(wd.url("/"))
                .header("X-Virga-Lambda-Invoke", "1")
                .body(json!({"ms": 300}).to_string());
            tokio::spawn(async move { json(req.send().await.unwrap()).await })
        })
        .collect();
    let mut spans = Vec::new();
    for task in tasks {
        let (error, body) = task.await.unwrap();
        assert_eq!(error, None, "{body}");
        spans.push((
            body["start"].as_f64().unwrap(),
            body["end"].as_f64().unwrap(),
        ));
    }
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "two events at once: {spans:?}");
    }
}
