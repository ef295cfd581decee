//! The Runtime API as a runtime sees it, driven by a Python runtime of the test's own that
//! tries what the fixture never does: other request ids, unknown routes, an error that is not
//! JSON, streams with error trailers and a stream that outlives its deadline.

use std::time::Duration;

use serde_json::{json, Value};
use virga_testkit::watchdog::{client, script, wait_for_status, Watchdog};

use super::{invoke, json};

const PROBING_RUNTIME: &str = r#"
import base64, json, os, socket, time, urllib.error, urllib.request
api = os.environ["AWS_LAMBDA_RUNTIME_API"]
base = "http://" + api + "/2018-06-01/runtime"

def call(method, path, body=None, headers={}):
    req = urllib.request.Request(base + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req) as r:
            return [r.status, json.loads(r.read())]
    except urllib.error.HTTPError as e:
        return [e.code, json.loads(e.read())]

def respond(rid, value):
    return call("POST", "/invocation/" + rid + "/response", json.dumps(value).encode())

def stream(rid, chunks, trailers):
    host, port = api.split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(("POST /2018-06-01/runtime/invocation/" + rid + "/response HTTP/1.1\r\n"
        "Host: " + api + "\r\nLambda-Runtime-Function-Response-Mode: streaming\r\n"
        "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
        "Trailer: Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body\r\n\r\n").encode())
    for chunk, pause in chunks:
        s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        time.sleep(pause)
    s.sendall(b"0\r\n" + trailers + b"\r\n")
    answer = s.recv(4096)
    s.close()
    return answer

late = None
while True:
    with urllib.request.urlopen(base + "/invocation/next") as r:
        rid = r.headers["Lambda-Runtime-Aws-Request-Id"]
        case = json.loads(r.read())["case"]
    if case == "probe":
        wrong = respond("not-" + rid, {})
        unknown = call("GET", "/nope")
        respond(rid, {"wrong_id": wrong, "unknown": unknown})
        late = respond(rid, {"again": True})
    elif case == "late":
        respond(rid, {"late": late})
    elif case == "plain-error":
        call("POST", "/invocation/" + rid + "/error", b"plain text failure",
             {"Lambda-Runtime-Function-Error-Type": "Custom.Type"})
    elif case == "trailer":
        body = base64.b64encode(b'{"errorMessage":"broke"}')
        stream(rid, [(b"one\n", 0.3), (b"two\n", 0)],
               b"Lambda-Runtime-Function-Error-Type: Runtime.StreamError\r\n"
               b"Lambda-Runtime-Function-Error-Body: " + body + b"\r\n")
    elif case == "slow":
        stream(rid, [(b"a\n", 30)], b"")
    else:
        respond(rid, {"pid": os.getpid()})
"#;

async fn probing(extra: &[(&str, &str)]) -> (Watchdog, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let py = script(dir.path(), "runtime.py", PROBING_RUNTIME);
    let fprocess = format!("python3 {}", py.display());
    let mut env = vec![("mode", "lambda"), ("fprocess", fprocess.as_str())];
    env.extend_from_slice(extra);
    let wd = Watchdog::start(&env);
    wait_for_status(
        &client(),
        &wd.url("/_/health"),
        200,
        Duration::from_secs(20),
    )
    .await;
    (wd, dir)
}

#[tokio::test]
async fn runtime_api_refuses_other_request_ids() {
    let (wd, _dir) = probing(&[]).await;
    let (error, body) = json(invoke(&wd, &json!({"case": "probe"}), &[]).await).await;
    assert_eq!(error, None, "{body}");
    assert_eq!(body["wrong_id"][0], 400, "{body}");
    assert_eq!(body["wrong_id"][1]["errorType"], "InvalidRequestID");
    assert_eq!(body["unknown"][0], 404, "{body}");
    assert!(body["unknown"][1]["errorMessage"].is_string(), "{body}");
    // A second answer to an answered event is refused too.
    let (_, body) = json(invoke(&wd, &json!({"case": "late"}), &[]).await).await;
    assert_eq!(body["late"][0], 400, "{body}");
    assert_eq!(body["late"][1]["errorType"], "InvalidRequestID");
}

#[tokio::test]
async fn an_error_that_is_not_json_is_wrapped_with_its_type() {
    let (wd, _dir) = probing(&[]).await;
    let (error, body) = json(invoke(&wd, &json!({"case": "plain-error"}), &[]).await).await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(
        body,
        json!({"errorType": "Custom.Type", "errorMessage": "plain text failure"})
    );
}

/// The chunks of `resp` until its end (`Ok`) or an error (`Err` with what came before).
async fn chunks(mut resp: reqwest::Response) -> Result<Vec<u8>, Vec<u8>> {
    let mut all = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => all.extend_from_slice(&c),
            Ok(None) => return Ok(all),
            Err(_) => return Err(all),
        }
    }
}

#[tokio::test]
async fn error_trailers_cut_the_stream() {
    let (wd, _dir) = probing(&[]).await;
    let resp = invoke(&wd, &json!({"case": "trailer"}), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let got = chunks(resp).await;
    assert_eq!(got, Err(b"one\ntwo\n".to_vec()), "the stream was not cut");
    // The runtime got its 202 and serves the next call.
    let (error, body) = json(invoke(&wd, &json!({"case": "ok"}), &[]).await).await;
    assert_eq!(error, None, "{body}");
}

#[tokio::test]
async fn a_stream_past_its_deadline_is_cut_and_the_runtime_restarted() {
    let (wd, _dir) = probing(&[("exec_timeout", "1s")]).await;
    let (_, first) = json(invoke(&wd, &json!({"case": "ok"}), &[]).await).await;
    let started = std::time::Instant::now();
    let resp = invoke(&wd, &json!({"case": "slow"}), &[]).await;
    let got = chunks(resp).await;
    assert_eq!(got, Err(b"a\n".to_vec()));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let (error, after) = json(invoke(&wd, &json!({"case": "ok"}), &[]).await).await;
    assert_eq!(error, None, "{after}");
    assert_ne!(after["pid"], first["pid"]);
    assert_ne!(after["pid"], Value::Null);
}
