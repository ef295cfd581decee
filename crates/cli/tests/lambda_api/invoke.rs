//! `Invoke` through boto3: results, function errors, DryRun, qualifiers and ARNs, the 6 MiB
//! limit, refused signatures, throttling, Event delivery with Lambda's retries and dead
//! letters, and the headers a function gets.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use virga_testkit::{boto3, script, Platform, PASSWORD};

use crate::sdk;

const WAIT: Duration = Duration::from_secs(30);

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn request_response_dry_run_errors_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    p.deploy_process("echo", "cat", json!({}));
    let fail = script(
        dir.path(),
        "fail.sh",
        "cat >/dev/null; echo it broke; exit 3",
    );
    p.deploy_process("fail", &fail, json!({}));
    let out = sdk(
        &p,
        dir.path(),
        r#"
r = c.invoke(FunctionName="echo", Payload=json.dumps({"a": 1}))
out["ok"] = [r["StatusCode"], payload(r), r.get("FunctionError"), r["ExecutedVersion"]]
arn = "arn:aws:lambda:us-east-1:000000000000:function:echo"
out["arn"] = payload(c.invoke(FunctionName=arn + ":$LATEST", Payload=b'"x"'))
out["partial"] = payload(c.invoke(FunctionName="000000000000:function:echo", Payload=b"[1]"))
out["qualified"] = payload(c.invoke(FunctionName="echo", Qualifier="$LATEST", Payload=b"2"))
out["empty"] = payload(c.invoke(FunctionName="echo"))
out["dry"] = c.invoke(FunctionName="echo", InvocationType="DryRun")["StatusCode"]
r = c.invoke(FunctionName="fail", Payload=b"{}")
out["fail"] = [r["StatusCode"], r.get("FunctionError"), json.loads(payload(r))]
out["missing"] = err(lambda: c.invoke(FunctionName="nope", Payload=b"{}"))
out["dry_missing"] = err(lambda: c.invoke(FunctionName="nope", InvocationType="DryRun"))
out["version"] = err(lambda: c.invoke(FunctionName="echo", Qualifier="prod"))
out["not_json"] = err(lambda: c.invoke(FunctionName="echo", Payload=b"{not json"))
big = b'"' + b"x" * (7 << 20) + b'"'
out["big"] = err(lambda: c.invoke(FunctionName="echo", Payload=big))
"#,
    );
    assert_eq!(out["ok"], json!([200, "{\"a\": 1}", null, "$LATEST"]));
    assert_eq!(out["arn"], "\"x\"");
    assert_eq!(out["partial"], "[1]");
    assert_eq!(out["qualified"], "2");
    assert_eq!(out["empty"], "{}", "an empty payload is {{}}");
    assert_eq!(out["dry"], 204);
    assert_eq!(out["fail"][0], 200);
    assert_eq!(out["fail"][1], "Unhandled");
    assert_eq!(out["fail"][2]["errorType"], "Function.Http500", "{out}");
    assert!(out["fail"][2]["errorMessage"].is_string(), "{out}");
    for k in ["missing", "dry_missing", "version"] {
        assert_eq!(out[k]["code"], "ResourceNotFoundException", "{k}: {out}");
        assert_eq!(out[k]["class"], "ResourceNotFoundException", "{k}: {out}");
        assert_eq!(out[k]["status"], 404, "{k}: {out}");
    }
    let msg = out["missing"]["message"].as_str().unwrap();
    assert_eq!(
        msg,
        "Function not found: arn:aws:lambda:us-east-1:000000000000:function:nope"
    );
    assert!(
        out["version"]["message"]
            .as_str()
            .unwrap()
            .ends_with(":function:echo:prod"),
        "{out}"
    );
    assert_eq!(out["not_json"]["code"], "InvalidRequestContentException");
    assert_eq!(out["not_json"]["status"], 400);
    assert_eq!(
        out["big"]["code"], "RequestEntityTooLargeException",
        "{out}"
    );
    assert_eq!(out["big"]["status"], 413);
    // Counted like /function/ calls: echo answered 200 five times (DryRun and refused calls reach nothing).
    let ok = r#"gateway_function_invocation_total{function_name="echo.openfaas-fn",code="200"}"#;
    assert_eq!(p.metric(ok), Some(5.0));
    let failed =
        r#"gateway_function_invocation_total{function_name="fail.openfaas-fn",code="500"}"#;
    assert_eq!(p.metric(failed), Some(1.0));
    // A function at zero is started for the call, as for /function/.
    p.scale_to_zero("echo");
    let out = sdk(
        &p,
        dir.path(),
        r#"out["cold"] = payload(c.invoke(FunctionName="echo", Payload=b"3"))"#,
    );
    assert_eq!(out["cold"], "3");
}

#[test]
fn signatures_are_checked_and_basic_auth_works_too() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let hdrs = script(
        dir.path(),
        "hdrs.sh",
        "cat >/dev/null; printf '%s|%s|%s|%s' \"$Http_Authorization\" \
         \"$Http_X_Virga_Lambda_Invoke\" \"$Http_X_Amz_Client_Context\" \"$Http_X_Call_Id\"",
    );
    p.deploy_process("hdrs", &hdrs, json!({}));
    let call = r#"
out["r"] = err(lambda: c.invoke(FunctionName="hdrs", Payload=b"{}"))
out["list"] = err(lambda: c.list_functions())
"#;
    let wrong = boto3::run(dir.path(), &p.url, "admin", "wrong-secret", call);
    for k in ["r", "list"] {
        assert_eq!(wrong[k]["code"], "InvalidSignatureException", "{wrong}");
        assert_eq!(wrong[k]["status"], 403);
    }
    let unknown = boto3::run(dir.path(), &p.url, "someone", PASSWORD, call);
    assert_eq!(
        unknown["r"]["code"], "UnrecognizedClientException",
        "{unknown}"
    );
    // The right key: the function gets the Lambda mark, the client context and the request
    // id, never the caller's credentials.
    let out = sdk(
        &p,
        dir.path(),
        r#"
ctx = base64.b64encode(json.dumps({"custom": {"k": "v"}}).encode()).decode()
r = c.invoke(FunctionName="hdrs", Payload=b"{}", ClientContext=ctx)
out["seen"] = payload(r).split("|")
out["ctx"] = ctx
out["request_id"] = r["ResponseMetadata"]["RequestId"]
"#,
    );
    let seen = &out["seen"];
    assert_eq!(
        seen[0], "",
        "the function saw the Authorization header: {out}"
    );
    assert_eq!(seen[1], "1");
    assert_eq!(seen[2], out["ctx"]);
    assert_eq!(seen[3], out["request_id"], "{out}");
    // Without credentials: Lambda's MissingAuthenticationTokenException; with basic auth
    // (curl users): served.
    let path = "/2015-03-31/functions/hdrs/invocations";
    let r = p.anon(Method::POST, path).body("{}").send().unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );
    assert!(r.headers().contains_key("x-amzn-requestid"));
    assert_eq!(
        r.text().unwrap(),
        r#"{"message":"Missing Authentication Token"}"#
    );
    let r = p.sys(Method::POST, path).body("{}").send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-amz-executed-version"], "$LATEST");
    let text = r.text().unwrap();
    assert!(text.starts_with("|1||"), "{text}");
    // /function/ callers cannot pass themselves off as the Invoke API.
    let r = p
        .anon(Method::POST, "/function/hdrs")
        .header("X-Virga-Lambda-Invoke", "1")
        .body("{}")
        .send()
        .unwrap();
    let text = r.text().unwrap();
    assert!(text.starts_with("||"), "{text}");
}

#[test]
fn max_inflight_is_too_many_requests() {
    let dir = tempfile::tempdir().unwrap();
    let p = Arc::new(Platform::start_with(
        dir.path(),
        &["--queue-timeout-ms", "300"],
    ));
    let slow = script(
        dir.path(),
        "slow.sh",
        "cat >/dev/null; sleep 3; echo '\"done\"'",
    );
    p.deploy_process(
        "slow",
        &slow,
        json!({"envVars": {"max_inflight": "1"}, "labels": {"com.openfaas.scale.max": "1"}}),
    );
    let out = sdk(
        &p,
        dir.path(),
        r#"
import threading, time
first = {}
t = threading.Thread(target=lambda: first.update(r=payload(c.invoke(FunctionName="slow"))))
t.start()
time.sleep(1.5)
out["second"] = err(lambda: c.invoke(FunctionName="slow"))
t.join()
out["first"] = first["r"]
"#,
    );
    assert_eq!(out["first"], "\"done\"\n", "{out}");
    assert_eq!(out["second"]["code"], "TooManyRequestsException", "{out}");
    assert_eq!(out["second"]["status"], 429);
}

#[test]
fn events_are_delivered_retried_three_times_then_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let got = dir.path().join("rec.calls");
    let rec = script(
        dir.path(),
        "rec.sh",
        &format!(
            "body=$(cat); echo \"$Http_X_Call_Id $Http_X_Virga_Lambda_Invoke $body\" >> {}",
            got.display()
        ),
    );
    p.deploy_process("rec", &rec, json!({}));
    let bad_calls = dir.path().join("bad.calls");
    let bad = script(
        dir.path(),
        "bad.sh",
        &format!(
            "cat >/dev/null; echo \"$Http_X_Call_Id\" >> {}; exit 1",
            bad_calls.display()
        ),
    );
    p.deploy_process("bad", &bad, json!({}));
    let bad2_calls = dir.path().join("bad2.calls");
    let bad2 = script(
        dir.path(),
        "bad2.sh",
        &format!(
            "cat >/dev/null; echo \"$Http_X_Call_Id\" >> {}; exit 1",
            bad2_calls.display()
        ),
    );
    let two = json!({"annotations": {"com.openfaas.retry.attempts": "2"}});
    p.deploy_process("bad2", &bad2, two);
    let out = sdk(
        &p,
        dir.path(),
        r#"
r = c.invoke(FunctionName="rec", InvocationType="Event", Payload=json.dumps({"n": 7}))
out["rec"] = [r["StatusCode"], payload(r), r["ResponseMetadata"]["RequestId"]]
r = c.invoke(FunctionName="bad", InvocationType="Event", Payload=b"{}")
out["bad"] = [r["StatusCode"], r["ResponseMetadata"]["RequestId"]]
r = c.invoke(FunctionName="bad2", InvocationType="Event", Payload=b"{}")
out["bad2"] = r["ResponseMetadata"]["RequestId"]
big = b'"' + b"x" * (1100 << 10) + b'"'
out["big"] = err(lambda: c.invoke(FunctionName="rec", InvocationType="Event", Payload=big))
out["missing"] = err(lambda: c.invoke(FunctionName="nope", InvocationType="Event"))
"#,
    );
    assert_eq!(out["rec"][0], 202, "{out}");
    assert_eq!(out["rec"][1], "");
    let id = out["rec"][2].as_str().unwrap();
    assert!(
        p.eventually(WAIT, || !lines(&got).is_empty()),
        "not delivered"
    );
    assert_eq!(lines(&got), vec![format!("{id} 1 {{\"n\": 7}}")]);
    assert_eq!(
        out["big"]["code"], "RequestEntityTooLargeException",
        "{out}"
    );
    assert!(out["big"]["message"]
        .as_str()
        .unwrap()
        .contains("too large for the Event invocation type (limit 1048576 bytes)"));
    assert_eq!(out["missing"]["code"], "ResourceNotFoundException");
    // A failing function: Lambda's 3 attempts (2 retries), then a dead letter; 2 where the
    // function's com.openfaas.retry.attempts says so.
    let bad_id = out["bad"][1].as_str().unwrap().to_string();
    let bad2_id = out["bad2"].as_str().unwrap().to_string();
    let dead = || p.get_json("/system/virga/dead-letters");
    assert!(
        p.eventually(WAIT, || dead().as_array().unwrap().len() == 2),
        "{}",
        dead()
    );
    assert_eq!(lines(&bad_calls), vec![bad_id.clone(); 3]);
    assert_eq!(lines(&bad2_calls), vec![bad2_id.clone(); 2]);
    let dead = dead();
    let of = |id: &str| {
        dead.as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(of(&bad_id)["attempts"], 3, "{dead}");
    assert_eq!(of(&bad_id)["function"], "bad");
    assert_eq!(of(&bad2_id)["attempts"], 2, "{dead}");
    // The same function through /async-function/ keeps OpenFaaS's policy (500 is not retried).
    let r = p
        .anon(Method::POST, "/async-function/bad")
        .header("X-Call-Id", "plain")
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(p.eventually(WAIT, || lines(&bad_calls).len() == 4));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(lines(&bad_calls).len(), 4, "a plain async 500 was retried");
}
