//! node-lambda: the template's own Runtime API client runs `exports.handler`, async or
//! callback-style.

use std::time::{Duration, Instant};

use serde_json::json;
use virga_testkit::{boto3, Platform, PASSWORD};

use crate::{assert_init_error_names_the_missing_module, deploy, json, stack_copy, url};

/// The test function. Its arity is 3, so it is a callback-style handler; the paths that
/// return a promise are answered by the promise, as Lambda's Node.js runtime does.
pub const HANDLER: &str = r#"'use strict'

exports.handler = (event, context, callback) => {
  switch (event.rawPath) {
    case '/echo':
      return Promise.resolve({ statusCode: 200, headers: { 'content-type': 'application/json' }, body: JSON.stringify(event) })
    case '/binary': {
      const body = Buffer.from(event.body, event.isBase64Encoded ? 'base64' : 'utf8').reverse()
      return Promise.resolve({ statusCode: 201, headers: { 'x-fn': 'yes' }, cookies: ['a=1', 'b=2'], body: body.toString('base64'), isBase64Encoded: true })
    }
    case '/string':
      return Promise.resolve('plain text')
    case '/throw':
      return (async () => { throw new TypeError('not a number') })()
    case '/context':
      return Promise.resolve({
        functionName: context.functionName,
        functionVersion: context.functionVersion,
        awsRequestId: context.awsRequestId,
        remaining: context.getRemainingTimeInMillis(),
        invokedFunctionArn: context.invokedFunctionArn,
        memoryLimitInMB: context.memoryLimitInMB,
        logGroupName: context.logGroupName,
        logStreamName: context.logStreamName,
        callbackWaitsForEmptyEventLoop: context.callbackWaitsForEmptyEventLoop,
        clientContext: context.clientContext,
        cwd: process.cwd()
      })
    case '/callback-waits':
      // The answer goes out once the event loop is empty: after this timer.
      setTimeout(() => {}, 300)
      return callback(null, { style: 'callback' })
    case '/callback-now':
      context.callbackWaitsForEmptyEventLoop = false
      setTimeout(() => {}, 3000)
      return callback(null, { style: 'callback', waited: false })
    case '/log':
      console.log('marker %s', context.awsRequestId)
      return Promise.resolve(context.awsRequestId)
    case '/uncaught':
      // Thrown outside the handler's promise: the invocation fails and the runtime restarts.
      setTimeout(() => { throw new SyntaxError('late failure') }, 0)
      return new Promise(() => {})
    case '/pid':
      return Promise.resolve(process.pid)
    case '/callback-error':
      return callback(new RangeError('out of range'))
    default:
      return callback(null, { statusCode: 404, body: 'no such path' })
  }
}
"#;

/// GET `path` of `nodefn`, timed.
fn timed_get(p: &Platform, path: &str) -> (reqwest::blocking::Response, Duration) {
    let started = Instant::now();
    let r = p.http.get(url(p, "nodefn", path)).send().unwrap();
    (r, started.elapsed())
}

#[test]
fn node_lambda_function_url_events_results_and_errors() {
    let work = stack_copy("nodefn", "");
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start(data.path());
    deploy(&p, work.path(), "nodefn");

    let r = p
        .http
        .get(url(&p, "nodefn", "/echo?a=1&a=2&b=x%20y"))
        .header("X-Test", "one")
        .header("Cookie", "c1=v1; c2=v2")
        .send()
        .unwrap();
    let event = json(r, 200);
    assert_eq!(event["rawPath"], "/echo", "{event}");
    assert_eq!(event["rawQueryString"], "a=1&a=2&b=x%20y");
    assert_eq!(
        event["queryStringParameters"],
        json!({"a": "1,2", "b": "x y"})
    );
    assert_eq!(event["headers"]["x-test"], "one");
    assert_eq!(event["cookies"], json!(["c1=v1", "c2=v2"]));
    assert_eq!(event["requestContext"]["http"]["method"], "GET");

    let bytes: Vec<u8> = (0..=255).collect();
    let r = p
        .http
        .post(url(&p, "nodefn", "/binary"))
        .body(bytes.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-fn"], "yes");
    let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    let mut reversed = bytes;
    reversed.reverse();
    assert_eq!(r.bytes().unwrap().to_vec(), reversed);

    let (r, _) = timed_get(&p, "/string");
    assert_eq!(r.text().unwrap(), "plain text");

    // Errors as Node's runtime reports them: errorType is the error's name.
    let (r, _) = timed_get(&p, "/throw");
    let err = json(r, 502);
    assert_eq!(err["errorType"], "TypeError", "{err}");
    assert_eq!(err["errorMessage"], "not a number");
    let (r, _) = timed_get(&p, "/callback-error");
    let err = json(r, 502);
    assert_eq!(err["errorType"], "RangeError", "{err}");
    assert_eq!(err["errorMessage"], "out of range");

    let (r, _) = timed_get(&p, "/context");
    let c = json(r, 200);
    assert_eq!(c["functionName"], "nodefn", "{c}");
    assert_eq!(c["functionVersion"], "$LATEST");
    assert_eq!(
        c["invokedFunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:nodefn"
    );
    assert!(
        c["memoryLimitInMB"]
            .as_str()
            .is_some_and(|m| m.parse::<u64>().is_ok()),
        "{c}"
    );
    assert_eq!(c["logGroupName"], "/aws/lambda/nodefn");
    assert!(
        c["logStreamName"].as_str().is_some_and(|s| !s.is_empty()),
        "{c}"
    );
    assert_eq!(c["callbackWaitsForEmptyEventLoop"], true);
    assert!(
        c["awsRequestId"].as_str().is_some_and(|s| !s.is_empty()),
        "{c}"
    );
    let remaining = c["remaining"].as_i64().unwrap();
    assert!(remaining > 0 && remaining <= 10_000, "{c}");
    assert!(c["cwd"].as_str().unwrap().ends_with("/function"), "{c}");

    // Callback style: the answer waits for the event loop to empty (a 300 ms timer),
    // unless the handler said not to (a 3 s timer it does not wait for).
    let (r, took) = timed_get(&p, "/callback-waits");
    assert_eq!(json(r, 200), json!({"style": "callback"}));
    assert!(took >= Duration::from_millis(300), "{took:?}");
    let (r, took) = timed_get(&p, "/callback-now");
    assert_eq!(json(r, 200), json!({"style": "callback", "waited": false}));
    assert!(took < Duration::from_secs(3), "{took:?}");

    // console.log lines carry the request id and level, as on Lambda, into the logs.
    let (r, _) = timed_get(&p, "/log");
    let id = r.text().unwrap();
    assert!(!id.is_empty());
    let logs = || {
        p.sys(reqwest::Method::GET, "/system/logs?name=nodefn&tail=-1")
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let line = format!("\t{id}\tINFO\tmarker {id}");
    let logged = || {
        logs().lines().any(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .is_ok_and(|v| v["text"].as_str().is_some_and(|t| t.ends_with(&line)))
        })
    };
    assert!(p.eventually(Duration::from_secs(10), logged), "{}", logs());

    // An error thrown outside the handler's promise fails the call; a new runtime serves
    // the next one.
    let (r, _) = timed_get(&p, "/pid");
    let pid = json(r, 200);
    let (r, _) = timed_get(&p, "/uncaught");
    let err = json(r, 502);
    assert_eq!(err["errorType"], "SyntaxError", "{err}");
    assert_eq!(err["errorMessage"], "late failure");
    let (r, _) = timed_get(&p, "/pid");
    assert_ne!(json(r, 200), pid);
}

#[test]
fn node_lambda_init_error_names_the_missing_module() {
    assert_init_error_names_the_missing_module("nodefn", "/echo");
}

#[test]
fn node_lambda_through_boto3() {
    let work = stack_copy("nodefn", "");
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start(data.path());
    deploy(&p, work.path(), "nodefn");
    let out = boto3::run(
        work.path(),
        &p.url,
        "admin",
        PASSWORD,
        r#"
ctx = base64.b64encode(json.dumps({"custom": {"tenant": "t1"}}).encode()).decode()
r = c.invoke(FunctionName="nodefn", Payload=json.dumps({"rawPath": "/context"}), ClientContext=ctx)
out["context"] = [r.get("FunctionError"), json.loads(payload(r)), r["ResponseMetadata"]["RequestId"]]
r = c.invoke(FunctionName="nodefn", Payload=json.dumps({"rawPath": "/throw"}))
out["thrown"] = [r.get("FunctionError"), json.loads(payload(r))]
r = c.invoke(FunctionName="nodefn", Payload=json.dumps({"rawPath": "/callback-waits"}))
out["callback"] = [r.get("FunctionError"), json.loads(payload(r))]
"#,
    );
    let (c, id) = (&out["context"][1], &out["context"][2]);
    assert_eq!(out["context"][0], serde_json::Value::Null, "{out}");
    assert_eq!(c["functionName"], "nodefn");
    assert_eq!(&c["awsRequestId"], id);
    assert_eq!(c["clientContext"]["custom"], json!({"tenant": "t1"}));
    assert_eq!(out["thrown"][0], "Unhandled", "{out}");
    assert_eq!(out["thrown"][1]["errorType"], "TypeError");
    assert_eq!(out["thrown"][1]["errorMessage"], "not a number");
    assert_eq!(out["callback"], json!([null, {"style": "callback"}]));
}
