//! Function-URL calls (any request without `X-Virga-Lambda-Invoke`): the payload-2.0 event
//! the runtime gets, and how its result becomes the HTTP answer; streamed answers.

use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use virga_testkit::watchdog::client;

use super::{fixture, invoke};

#[tokio::test]
async fn the_event_has_path_query_headers_cookies_and_text_body() {
    let wd = fixture(&[]).await;
    let resp = client()
        .post(wd.url("/echo?a=1&a=2&b=x%20y&empty="))
        .header("Cookie", "c1=v1; c2=v2")
        .header("X-Custom", "one")
        .header("X-Forwarded-For", "203.0.113.9, 10.0.0.1")
        .header("User-Agent", "virga-test/1")
        .header("X-Call-Id", "url-1")
        .body("héllo text")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let event: Value = resp.json().await.unwrap();
    assert_eq!(event["version"], "2.0");
    assert_eq!(event["routeKey"], "$default");
    assert_eq!(event["rawPath"], "/echo");
    assert_eq!(event["rawQueryString"], "a=1&a=2&b=x%20y&empty=");
    assert_eq!(
        event["queryStringParameters"],
        json!({"a": "1,2", "b": "x y", "empty": ""})
    );
    assert_eq!(event["cookies"], json!(["c1=v1", "c2=v2"]));
    assert_eq!(event["headers"]["x-custom"], "one");
    assert_eq!(event["headers"].get("cookie"), None);
    assert_eq!(event["body"], "héllo text");
    assert_eq!(event["isBase64Encoded"], false);
    let ctx = &event["requestContext"];
    assert_eq!(ctx["http"]["method"], "POST");
    assert_eq!(ctx["http"]["path"], "/echo");
    assert_eq!(ctx["http"]["protocol"], "HTTP/1.1");
    assert_eq!(ctx["http"]["sourceIp"], "203.0.113.9");
    assert_eq!(ctx["http"]["userAgent"], "virga-test/1");
    assert_eq!(ctx["requestId"], "url-1");
    assert_eq!(ctx["stage"], "$default");
    assert!(ctx["timeEpoch"].as_i64().unwrap() > 1_700_000_000_000);
    assert!(ctx["time"].as_str().unwrap().ends_with(" +0000"));

    // A GET without a body or query has neither.
    let event: Value = client()
        .get(wd.url("/echo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(event.get("body"), None);
    assert_eq!(event.get("queryStringParameters"), None);
    assert_eq!(event["rawQueryString"], "");
}

#[tokio::test]
async fn a_binary_body_is_base64_both_ways() {
    let wd = fixture(&[]).await;
    let bytes: Vec<u8> = (0..=255u8).rev().collect();
    let event: Value = client()
        .put(wd.url("/echo"))
        .header("Content-Type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(event["isBase64Encoded"], true);
    let body = event["body"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap(),
        bytes
    );
    // A result with isBase64Encoded is decoded into the answer.
    let resp = client().get(wd.url("/binary")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let got = resp.bytes().await.unwrap();
    assert_eq!(got.to_vec(), (0..=255u8).collect::<Vec<u8>>());
}

#[tokio::test]
async fn status_headers_and_cookies_of_the_result_are_the_answer() {
    let wd = fixture(&[]).await;
    let resp = client().get(wd.url("/status")).send().await.unwrap();
    assert_eq!(resp.status(), 418);
    assert_eq!(resp.headers()["x-fixture"], "teapot");
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2"]);
    assert_eq!(resp.text().await.unwrap(), "short and stout");

    // A bare string is its content; other JSON is the body as it is.
    let resp = client().get(wd.url("/string")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.unwrap(), "just a string");
}

#[tokio::test]
async fn a_failing_function_url_call_is_502_with_the_error() {
    let wd = fixture(&[]).await;
    let resp = client().get(wd.url("/error")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errorType"], "FixtureError");
}

#[tokio::test]
async fn a_streamed_answer_arrives_in_pieces() {
    let wd = fixture(&[]).await;
    let started = Instant::now();
    let mut resp = client().get(wd.url("/stream?x=1")).send().await.unwrap();
    // The prelude is the answer's status and cookies.
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["set-cookie"], "s=1");
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let mut pieces = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        pieces.push((started.elapsed(), chunk));
    }
    let text: Vec<u8> = pieces.iter().flat_map(|(_, c)| c.to_vec()).collect();
    assert_eq!(String::from_utf8(text).unwrap(), "part 0\npart 1\npart 2\n");
    let first = pieces.first().unwrap().0;
    let last = pieces.last().unwrap().0;
    assert!(
        last - first >= Duration::from_millis(500),
        "the parts came together: {pieces:?}"
    );

    // A raw invoke streams the runtime's bytes as they are (prelude included).
    let started = Instant::now();
    let mut resp = invoke(&wd, &json!({"op": "stream", "gap_ms": 400}), &[]).await;
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.awslambda.http-integration-response"
    );
    let mut first = None;
    let mut all = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        first.get_or_insert(started.elapsed());
        all.extend_from_slice(&chunk);
    }
    assert!(started.elapsed() - first.unwrap() >= Duration::from_millis(700));
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.ends_with("\0\0\0\0\0\0\0\0part 0\npart 1\npart 2\n"),
        "{text:?}"
    );
    // The runtime is free again afterwards.
    let resp = invoke(&wd, &json!({"op": "echo"}), &[]).await;
    assert_eq!(resp.status(), 200);
}
