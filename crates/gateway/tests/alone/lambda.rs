//! The Lambda API's authentication, with requests signed here by `aws-sigv4` at chosen
//! times: 15 minutes of clock skew either way, the `lambda` service only, wrong signatures
//! blocking the address as wrong passwords do, and Lambda's error shapes for each refusal.

use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use virga_testkit::PASSWORD;

use crate::Gateway;

/// A request to `path` signed with `secret` for `service` as of `time`.
fn signed(
    g: &Gateway,
    path: &str,
    secret: &str,
    service: &str,
    time: SystemTime,
) -> RequestBuilder {
    let host = g.url.strip_prefix("http://").unwrap();
    let identity =
        aws_credential_types::Credentials::new("admin", secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-central-1")
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let uri = format!("{}{path}", g.url);
    let req = SignableRequest::new(
        "GET",
        &uri,
        [("host", host)].into_iter(),
        SignableBody::Bytes(b""),
    )
    .unwrap();
    let (instructions, _) = sign(req, &params).unwrap().into_parts();
    let mut rb = g.anon(Method::GET, path);
    for (k, v) in instructions.headers() {
        rb = rb.header(k, v);
    }
    rb
}

/// Status, `x-amzn-ErrorType` and the JSON body.
async fn refusal(rb: RequestBuilder) -> (u16, String, Value) {
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let kind = r
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, kind, r.json().await.unwrap())
}

const LIST: &str = "/2015-03-31/functions/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_older_or_newer_than_15_minutes_are_refused() {
    let g = Gateway::start().await;
    g.deploy("echo", "cat", json!({})).await;
    let now = SystemTime::now();
    let min = |m: u64| Duration::from_secs(m * 60);
    // Within the skew: served, with ARNs in the signature's region.
    let r = signed(&g, LIST, PASSWORD, "lambda", now - min(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["Functions"][0]["FunctionArn"],
        "arn:aws:lambda:eu-central-1:000000000000:function:echo"
    );
    let (status, kind, body) = refusal(signed(&g, LIST, PASSWORD, "lambda", now - min(20))).await;
    assert_eq!((status, kind.as_str()), (403, "InvalidSignatureException"));
    let m = body["message"].as_str().unwrap();
    assert!(m.starts_with("Signature expired: "), "{m}");
    assert!(m.ends_with(" - 15 min.)"), "{m}");
    let (status, kind, body) = refusal(signed(&g, LIST, PASSWORD, "lambda", now + min(20))).await;
    assert_eq!((status, kind.as_str()), (403, "InvalidSignatureException"));
    let m = body["message"].as_str().unwrap();
    assert!(m.starts_with("Signature not yet current: "), "{m}");
    // Signed for another service.
    let (status, kind, body) = refusal(signed(&g, LIST, PASSWORD, "s3", now)).await;
    assert_eq!((status, kind.as_str()), (403, "InvalidSignatureException"));
    assert!(body["message"].as_str().unwrap().contains("'lambda'"));
    // Basic auth with a wrong password, and no credentials at all.
    let (status, kind, _) = refusal(g.anon(Method::GET, LIST).basic_auth("admin", Some("x"))).await;
    assert_eq!(
        (status, kind.as_str()),
        (403, "UnrecognizedClientException")
    );
    let (status, kind, body) = refusal(g.anon(Method::GET, LIST)).await;
    assert_eq!(
        (status, kind.as_str()),
        (403, "MissingAuthenticationTokenException")
    );
    assert_eq!(body, json!({"message": "Missing Authentication Token"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_signatures_block_the_address_like_wrong_passwords() {
    let g = Gateway::start().await;
    let now = SystemTime::now();
    for _ in 0..6 {
        let (status, kind, _) = refusal(signed(&g, LIST, "guess", "lambda", now)).await;
        assert_eq!((status, kind.as_str()), (403, "InvalidSignatureException"));
    }
    // Now even the right secret waits.
    let r = signed(&g, LIST, PASSWORD, "lambda", now)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["x-amzn-errortype"], "TooManyRequestsException");
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&wait), "Retry-After {wait}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_invocation_types_and_log_types_are_400() {
    let g = Gateway::start().await;
    g.deploy("echo", "cat", json!({})).await;
    let path = "/2015-03-31/functions/echo/invocations";
    for (header, value) in [
        ("X-Amz-Invocation-Type", "Sometimes"),
        ("X-Amz-Log-Type", "All"),
    ] {
        let rb = g.sys(Method::POST, path).header(header, value).body("{}");
        let (status, kind, body) = refusal(rb).await;
        assert_eq!(
            (status, kind.as_str()),
            (400, "InvalidParameterValueException")
        );
        assert_eq!(body["Type"], "User");
        assert!(body["message"].as_str().unwrap().contains(value), "{body}");
    }
    // Without the async queue (not enabled here), an Event is a service error, not lost.
    let rb = g
        .sys(Method::POST, path)
        .header("X-Amz-Invocation-Type", "Event")
        .body("{}");
    let (status, kind, _) = refusal(rb).await;
    assert_eq!((status, kind.as_str()), (503, "ServiceException"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_before_the_body_is_kept() {
    let g = Gateway::start().await;
    g.deploy("echo", "cat", json!({})).await;
    let path = "/2015-03-31/functions/echo/invocations";
    let big = vec![b' '; 7 << 20];
    // Refused for its credentials, not its size: the 7 MiB were only drained.
    let (status, kind, _) = refusal(g.anon(Method::POST, path).body(big.clone())).await;
    assert_eq!(
        (status, kind.as_str()),
        (403, "MissingAuthenticationTokenException")
    );
    let rb = g
        .anon(Method::POST, path)
        .basic_auth("admin", Some("x"))
        .body(big.clone());
    let (status, kind, _) = refusal(rb).await;
    assert_eq!(
        (status, kind.as_str()),
        (403, "UnrecognizedClientException")
    );
    // With good credentials, its size is what is wrong.
    let (status, kind, body) = refusal(g.sys(Method::POST, path).body(big)).await;
    assert_eq!(
        (status, kind.as_str()),
        (413, "RequestEntityTooLargeException")
    );
    assert_eq!(
        body["message"],
        "Request must be smaller than 6291456 bytes for the InvokeFunction operation"
    );
}
