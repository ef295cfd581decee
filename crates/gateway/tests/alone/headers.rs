//! The headers of a call: `X-Call-Id` kept or generated and passed both ways, `X-Start-Time`
//! to the function, `X-Duration-Seconds` back, hop-by-hop headers dropped, `Host` forwarded
//! as `X-Forwarded-Host`, and answers sandboxed by CSP unless the function opts out.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use serde_json::json;

use crate::{answer, printer, Gateway};

/// The value of `NAME=` in a printer's output.
fn var<'a>(text: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}=");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {name} in {text:?}"))
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_ids_are_kept_or_generated_and_calls_are_timed() {
    let g = Gateway::start().await;
    g.deploy(
        "ids",
        &printer(&["Http_X_Call_Id", "Http_X_Start_Time"]),
        json!({}),
    )
    .await;
    let r = g
        .anon(Method::GET, "/function/ids")
        .header("x-call-id", "call-4711")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-call-id"], "call-4711");
    let (status, text) = answer(r).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(var(&text, "Http_X_Call_Id"), "call-4711");

    let (before, t) = (now_nanos(), Instant::now());
    let r = g.get("/function/ids").await;
    let elapsed = t.elapsed().as_secs_f64();
    let after = now_nanos();
    let id = r.headers()["x-call-id"].to_str().unwrap().to_string();
    let duration: f64 = r.headers()["x-duration-seconds"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (status, text) = answer(r).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(id.len(), 36, "a generated UUID: {id}");
    assert_eq!(
        var(&text, "Http_X_Call_Id"),
        id,
        "the function saw the same id"
    );
    let start: u128 = var(&text, "Http_X_Start_Time").parse().unwrap();
    assert!(
        (before..=after).contains(&start),
        "{before} <= {start} <= {after}"
    );
    assert!(
        duration > 0.0 && duration <= elapsed,
        "{duration} within {elapsed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_dropped_and_host_is_forwarded() {
    let g = Gateway::start().await;
    let vars = [
        "Http_Keep_Alive",
        "Http_Proxy_Authorization",
        "Http_Proxy_Connection",
        "Http_X_Forwarded_Host",
        "Http_X_Custom",
    ];
    g.deploy("hdrs", &printer(&vars), json!({})).await;
    let r = g
        .anon(Method::GET, "/function/hdrs")
        .header("host", "api.example:8080")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("proxy-connection", "keep-alive")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    let (status, text) = answer(r).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(var(&text, "Http_Keep_Alive"), "");
    assert_eq!(var(&text, "Http_Proxy_Authorization"), "");
    assert_eq!(var(&text, "Http_Proxy_Connection"), "");
    assert_eq!(var(&text, "Http_X_Forwarded_Host"), "api.example:8080");
    assert_eq!(var(&text, "Http_X_Custom"), "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_sandboxed_unless_the_function_opts_out() {
    let g = Gateway::start().await;
    g.deploy("page", "echo '<h1>hi</h1>'", json!({})).await;
    g.deploy(
        "trusted",
        "echo '<h1>hi</h1>'",
        json!({"annotations": {"virga.http.sandbox": "false"}}),
    )
    .await;
    let csp = |r: &reqwest::Response| {
        r.headers()
            .get_all("content-security-policy")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let r = g.get("/function/page").await;
    assert_eq!(r.status(), 200);
    assert_eq!(csp(&r), ["sandbox"]);
    let r = g.get("/function/trusted").await;
    assert_eq!(r.status(), 200);
    assert!(csp(&r).is_empty(), "{:?}", csp(&r));
    // Errors of unknown functions are sandboxed too.
    let r = g.get("/function/nobody").await;
    assert_eq!(r.status(), 404);
    assert_eq!(csp(&r), ["sandbox"]);
}
