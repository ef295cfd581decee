//! `Invoke` of a real Lambda function (`virga-lambda-fixture`, on the Rust `lambda_runtime`
//! crate, under the watchdog's `mode=lambda`) through boto3: the event and context, a raising
//! handler's `FunctionError`, `LogType=Tail`, a bad client context, a call past
//! `exec_timeout`, its configuration, an Event delivered, and an Event of a raising handler
//! dead-lettered after Lambda's 3 attempts.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use virga_testkit::Platform;

use crate::sdk;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_lambda_function_answers_raises_tails_and_gets_events() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let fixture = virga_testkit::lambda_fixture_bin();
    p.deploy_process(
        "lam",
        fixture.to_str().unwrap(),
        json!({"envVars": {"mode": "lambda", "exec_timeout": "2s"}}),
    );
    let out = sdk(
        &p,
        dir.path(),
        r#"
ctx = base64.b64encode(json.dumps({"custom": {"k": "v"}}).encode()).decode()
r = c.invoke(FunctionName="lam", Payload=json.dumps({"op": "echo", "x": 1}), ClientContext=ctx)
out["echo"] = [r["StatusCode"], r.get("FunctionError"), json.loads(payload(r)), r["ResponseMetadata"]["RequestId"], r["ExecutedVersion"]]
r = c.invoke(FunctionName="lam", Payload=json.dumps({"op": "error", "type": "ValueError", "message": "bad input"}))
out["raise"] = [r["StatusCode"], r.get("FunctionError"), json.loads(payload(r))]
r = c.invoke(FunctionName="lam", LogType="Tail", Payload=json.dumps({"op": "print", "lines": ["hello from the handler"]}))
out["tail"] = [payload(r), base64.b64decode(r["LogResult"]).decode(), r["ResponseMetadata"]["RequestId"]]
r = c.invoke(FunctionName="lam", InvocationType="Event", Payload=json.dumps({"op": "print", "lines": ["event-line-7"]}))
out["event"] = r["StatusCode"]
r = c.invoke(FunctionName="lam", InvocationType="Event", Payload=json.dumps({"op": "error", "type": "KeyError"}))
out["bad_event"] = [r["StatusCode"], r["ResponseMetadata"]["RequestId"]]
out["bad_ctx"] = err(lambda: c.invoke(FunctionName="lam", ClientContext="not base64 JSON"))
r = c.invoke(FunctionName="lam", Payload=json.dumps({"op": "sleep", "ms": 4000}))
out["slow"] = [r.get("FunctionError"), json.loads(payload(r))]
conf = c.get_function_configuration(FunctionName="lam")
out["conf"] = [conf["Handler"], conf["Timeout"], conf["Runtime"]]
"#,
    );
    let echo = &out["echo"];
    assert_eq!(echo[0], 200, "{out}");
    assert_eq!(echo[1], Value::Null);
    assert_eq!(echo[2]["event"], json!({"op": "echo", "x": 1}));
    assert_eq!(
        echo[2]["requestId"], echo[3],
        "the runtime got the request id"
    );
    assert_eq!(
        echo[2]["invokedFunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:lam"
    );
    assert_eq!(echo[2]["clientContext"]["custom"], json!({"k": "v"}));
    assert_eq!(echo[4], "$LATEST");
    let raised = &out["raise"];
    assert_eq!(raised[0], 200);
    assert_eq!(raised[1], "Unhandled");
    assert_eq!(raised[2]["errorType"], "ValueError", "{out}");
    assert_eq!(raised[2]["errorMessage"], "bad input");
    let tail = &out["tail"];
    assert_eq!(tail[0], "\"printed\"");
    let log = tail[1].as_str().unwrap();
    let id = tail[2].as_str().unwrap();
    assert!(log.contains(&format!("START RequestId: {id}")), "{log}");
    assert!(log.contains("hello from the handler"), "{log}");
    assert!(log.contains(&format!("REPORT RequestId: {id}")), "{log}");
    assert_eq!(out["event"], 202);
    // The watchdog's own Lambda-shaped refusal reaches the SDK as it is.
    assert_eq!(
        out["bad_ctx"]["code"], "InvalidRequestContentException",
        "{out}"
    );
    assert_eq!(out["bad_ctx"]["status"], 400);
    // Past exec_timeout: Lambda's timeout error from the watchdog.
    assert_eq!(out["slow"][0], "Unhandled", "{out}");
    assert_eq!(out["slow"][1]["errorType"], "Sandbox.Timedout");
    assert_eq!(out["conf"], json!(["handler.handler", 2, "provided"]));
    let logs = || {
        p.sys(Method::GET, "/system/logs?name=lam")
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    assert!(
        p.eventually(WAIT, || logs().contains("event-line-7")),
        "the Event was not delivered: {}",
        logs()
    );
    // A raising handler's Event: Lambda's 3 attempts, then a dead letter.
    let bad_id = out["bad_event"][1].as_str().unwrap().to_string();
    let dead = || p.get_json("/system/virga/dead-letters");
    assert!(
        p.eventually(WAIT, || dead()
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == bad_id.as_str())),
        "{}",
        dead()
    );
    let dead = dead();
    let letter = dead
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == bad_id.as_str())
        .unwrap();
    assert_eq!(letter["attempts"], 3, "{dead}");
    assert_eq!(letter["function"], "lam");
    assert_eq!(
        letter["status"], 200,
        "a function error answers 200: {dead}"
    );
}
