//! python3-lambda: the real awslambdaric runs an unmodified `handler(event, context)`.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use virga_testkit::{boto3, Platform, PASSWORD};

use crate::{assert_init_error_names_the_missing_module, deploy, json, stack_copy, url};

/// The test function: what it does depends on the function-URL event's `rawPath`.
pub const HANDLER: &str = r#"import base64
import json
import os


class PaymentDeclined(Exception):
    pass


def handler(event, context):
    path = event.get("rawPath") if isinstance(event, dict) else None
    if path == "/echo":
        return {"statusCode": 200, "headers": {"content-type": "application/json"},
                "body": json.dumps(event)}
    if path == "/binary":
        body = base64.b64decode(event["body"]) if event["isBase64Encoded"] else b""
        return {"statusCode": 201,
                "headers": {"content-type": "application/octet-stream", "x-fn": "yes"},
                "cookies": ["a=1; Path=/", "b=2"],
                "body": base64.b64encode(body[::-1]).decode(), "isBase64Encoded": True}
    if path == "/string":
        return "plain text"
    if path == "/dict":
        return {"a": 1, "b": [True, None]}
    if path == "/raise":
        raise PaymentDeclined("card 4242 declined")
    if path == "/context":
        print("context of", context.aws_request_id)
        cc = context.client_context
        return {"function_name": context.function_name,
                "client_custom": cc.custom if cc else None,
                "function_version": context.function_version,
                "aws_request_id": context.aws_request_id,
                "remaining": context.get_remaining_time_in_millis(),
                "memory_limit_in_mb": context.memory_limit_in_mb,
                "invoked_function_arn": context.invoked_function_arn,
                "log_group_name": context.log_group_name,
                "log_stream_name": context.log_stream_name,
                "task_root": os.environ.get("LAMBDA_TASK_ROOT"),
                "cwd": os.getcwd(),
                "greeting": os.environ.get("GREETING"),
                "bind_token": os.environ.get("VIRGA_BIND_TOKEN"),
                "pid": os.getpid()}
    return {"statusCode": 404, "body": "no such path"}
"#;

#[test]
fn python3_lambda_function_url_events_and_results() {
    let work = stack_copy("pyfn", "");
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start(data.path());
    deploy(&p, work.path(), "pyfn");
    // Listed like any other function (what the console shows).
    let listed = p.get_json("/system/functions");
    let f = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "pyfn");
    assert!(
        f.is_some_and(|f| f["image"]
            .as_str()
            .unwrap()
            .starts_with("virga.local/pyfn@sha256:")),
        "{listed}"
    );

    // The request as a function URL passes it: path, query, headers, cookies, method.
    let r = p
        .http
        .get(url(&p, "pyfn", "/echo?a=1&a=2&b=x%20y"))
        .header("X-Test", "one")
        .header("Cookie", "c1=v1; c2=v2")
        .send()
        .unwrap();
    let event = json(r, 200);
    assert_eq!(event["version"], "2.0", "{event}");
    assert_eq!(event["rawPath"], "/echo");
    assert_eq!(event["rawQueryString"], "a=1&a=2&b=x%20y");
    assert_eq!(
        event["queryStringParameters"],
        json!({"a": "1,2", "b": "x y"})
    );
    assert_eq!(event["headers"]["x-test"], "one");
    assert_eq!(event["cookies"], json!(["c1=v1", "c2=v2"]));
    assert_eq!(event["requestContext"]["http"]["method"], "GET");
    assert_eq!(event["requestContext"]["http"]["path"], "/echo");
    assert_eq!(event["isBase64Encoded"], false);

    // A text body arrives as text.
    let r = p
        .http
        .post(url(&p, "pyfn", "/echo"))
        .body("héllo")
        .send()
        .unwrap();
    let event = json(r, 200);
    assert_eq!(event["body"], "héllo");
    assert_eq!(event["isBase64Encoded"], false);
    assert_eq!(event["requestContext"]["http"]["method"], "POST");

    // A binary body arrives base64-encoded; a base64 result comes back as bytes, with its
    // status, headers and cookies.
    let bytes: Vec<u8> = (0..=255).collect();
    let r = p
        .http
        .post(url(&p, "pyfn", "/binary"))
        .body(bytes.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.headers()["x-fn"], "yes");
    let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2"]);
    let mut reversed = bytes;
    reversed.reverse();
    assert_eq!(r.bytes().unwrap().to_vec(), reversed);

    // A bare string is the body; a dict without statusCode is JSON.
    let r = p.http.get(url(&p, "pyfn", "/string")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "plain text");
    let r = p.http.get(url(&p, "pyfn", "/dict")).send().unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(json(r, 200), json!({"a": 1, "b": [true, null]}));

    // A raising handler: 502 with Lambda's error JSON, errorType the exception's class.
    let r = p.http.get(url(&p, "pyfn", "/raise")).send().unwrap();
    let err = json(r, 502);
    assert_eq!(err["errorType"], "PaymentDeclined", "{err}");
    assert_eq!(err["errorMessage"], "card 4242 declined");
    let trace = err["stackTrace"].to_string();
    assert!(trace.contains("handler.py"), "{err}");
    // The runtime lives on: the next call is served by the same process.
    let r = p.http.get(url(&p, "pyfn", "/dict")).send().unwrap();
    assert_eq!(r.status(), 200);
}

/// GET /context of `pyfn`, timed.
fn context(p: &Platform) -> (Value, Duration) {
    let started = Instant::now();
    let r = p.http.get(url(p, "pyfn", "/context")).send().unwrap();
    let v = json(r, 200);
    (v, started.elapsed())
}

#[test]
fn python3_lambda_context_and_scale_from_zero() {
    let work = stack_copy(
        "pyfn",
        "environment:\n  exec_timeout: 7s\nlimits:\n  memory: 96Mi\n",
    );
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start(data.path());
    deploy(&p, work.path(), "pyfn");

    let (c, _) = context(&p);
    assert_eq!(c["function_name"], "pyfn", "{c}");
    assert_eq!(c["function_version"], "$LATEST");
    assert_eq!(
        c["invoked_function_arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:pyfn"
    );
    assert_eq!(c["memory_limit_in_mb"], "96");
    assert_eq!(c["log_group_name"], "/aws/lambda/pyfn");
    assert!(
        c["log_stream_name"].as_str().is_some_and(|s| !s.is_empty()),
        "{c}"
    );
    // The deadline is exec_timeout from the hand-over.
    let remaining = c["remaining"].as_i64().unwrap();
    assert!(remaining > 5_000 && remaining <= 7_000, "{c}");
    // The runtime runs in function/, which is LAMBDA_TASK_ROOT.
    let cwd = c["cwd"].as_str().unwrap();
    assert!(cwd.ends_with("/function"), "{c}");
    assert_eq!(c["task_root"], cwd);
    let first_id = c["aws_request_id"].as_str().unwrap().to_string();
    let (again, _) = context(&p);
    assert_ne!(again["aws_request_id"], first_id.as_str());
    assert_eq!(
        again["pid"], c["pid"],
        "one runtime process serves every call"
    );

    // From zero: the call waits for a new runtime (a new process) and is served.
    p.scale_to_zero("pyfn");
    let (cold, took) = context(&p);
    assert_ne!(cold["pid"], c["pid"]);
    assert_eq!(cold["function_name"], "pyfn");
    eprintln!("python3-lambda first response from zero: {took:?}");
    // A function that sets watchdog variables of its own (exec_timeout) never takes a pooled
    // runtime: those are fixed when a watchdog starts.
    let warm = p.metric("virga_warm_starts_total{function_name=\"pyfn.openfaas-fn\"}");
    assert!(warm.unwrap_or(0.0) == 0.0, "{warm:?}");
}

#[test]
fn python3_lambda_from_zero_takes_a_pooled_runtime() {
    // The warm pool pre-starts python3-lambda watchdogs (no runtime yet); a start from zero
    // binds one: awslambdaric then starts in the function's code with its environment.
    let work = stack_copy("pyfn", "environment:\n  GREETING: hi\n");
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start(data.path());
    deploy(&p, work.path(), "pyfn");
    let (first, _) = context(&p);
    p.scale_to_zero("pyfn");
    let pooled = || p.metric("virga_warm_pool_instances{function_name=\"python3-lambda-");
    assert!(
        p.eventually(Duration::from_secs(30), || pooled().unwrap_or(0.0) >= 1.0),
        "no pooled python3-lambda runtime: {:?}",
        pooled()
    );
    let (c, took) = context(&p);
    eprintln!("python3-lambda first response from zero, pooled: {took:?}");
    assert_ne!(c["pid"], first["pid"]);
    let warm = p.metric("virga_warm_starts_total{function_name=\"pyfn.openfaas-fn\"}");
    assert!(warm.unwrap_or(0.0) >= 1.0, "{warm:?}");
    assert_eq!(c["function_name"], "pyfn", "{c}");
    assert_eq!(
        c["invoked_function_arn"],
        "arn:aws:lambda:us-east-1:000000000000:function:pyfn"
    );
    assert_eq!(c["memory_limit_in_mb"], "256");
    assert_eq!(c["greeting"], "hi");
    assert_eq!(c["bind_token"], Value::Null);
    assert!(c["cwd"].as_str().unwrap().ends_with("/function"), "{c}");
}

#[test]
fn python3_lambda_handler_comes_from_handler_env() {
    // stack.yml's _HANDLER picks another module's function of the same folder.
    let work = stack_copy("pyfn", "environment:\n  _HANDLER: alt.main\n");
    std::fs::write(
        work.path().join("pyfn/alt.py"),
        "import os\n\ndef main(event, context):\n    return {'alt': os.environ['_HANDLER']}\n",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start(data.path());
    let out = p.cli(work.path(), &["deploy"]);
    assert!(out.contains("Deployed pyfn"), "{out}");
    let r = p.http.get(url(&p, "pyfn", "/")).send().unwrap();
    assert_eq!(json(r, 200), json!({"alt": "alt.main"}));
}

#[test]
fn python3_lambda_init_error_is_lambdas() {
    assert_init_error_names_the_missing_module("pyfn", "/dict");
}

#[test]
fn python3_lambda_through_boto3() {
    // The AWS SDK's Invoke reaches the same awslambdaric runtime: the payload is the event,
    // the client context reaches `context`, a raising handler is an Unhandled function error.
    let work = stack_copy("pyfn", "");
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start(data.path());
    deploy(&p, work.path(), "pyfn");
    let out = boto3::run(
        work.path(),
        &p.url,
        "admin",
        PASSWORD,
        r#"
ctx = base64.b64encode(json.dumps({"custom": {"tenant": "t1"}}).encode()).decode()
r = c.invoke(FunctionName="pyfn", Payload=json.dumps({"rawPath": "/context"}),
             ClientContext=ctx, LogType="Tail")
out["context"] = json.loads(payload(r))
out["request_id"] = r["ResponseMetadata"]["RequestId"]
out["log"] = base64.b64decode(r["LogResult"]).decode()
out["error"] = r.get("FunctionError")
r = c.invoke(FunctionName="pyfn", Payload=json.dumps({"rawPath": "/raise"}))
out["raised"] = [r.get("FunctionError"), json.loads(payload(r))]
r = c.invoke(FunctionName="pyfn", Payload=b'"a bare string event"')
out["other"] = [r.get("FunctionError"), json.loads(payload(r))]
"#,
    );
    let c = &out["context"];
    assert_eq!(out["error"], Value::Null, "{out}");
    assert_eq!(c["function_name"], "pyfn");
    assert_eq!(c["client_custom"], json!({"tenant": "t1"}));
    assert_eq!(c["aws_request_id"], out["request_id"]);
    let log = out["log"].as_str().unwrap();
    let id = out["request_id"].as_str().unwrap();
    assert!(log.contains(&format!("context of {id}")), "{log}");
    assert!(log.contains(&format!("START RequestId: {id}")), "{log}");
    assert_eq!(out["raised"][0], "Unhandled", "{out}");
    assert_eq!(out["raised"][1]["errorType"], "PaymentDeclined");
    assert_eq!(out["raised"][1]["errorMessage"], "card 4242 declined");
    // Not a function-URL event: the handler's own 404 answer is the result, as JSON.
    assert_eq!(
        out["other"],
        json!([null, {"statusCode": 404, "body": "no such path"}])
    );
}
