//! `/system/*` is behind basic auth (401, with a challenge only for API clients; 429 with
//! `Retry-After` after repeated wrong passwords); `/function/*` and `/healthz` are not.

use reqwest::Method;
use serde_json::json;

use crate::{answer, Gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_routes_need_the_credentials_and_functions_do_not() {
    let g = Gateway::start().await;
    g.deploy("open", "cat", json!({})).await;
    let r = g.get("/system/functions").await;
    assert_eq!(r.status(), 401);
    let challenge = r.headers().get("www-authenticate").cloned();
    assert_eq!(challenge.unwrap(), "Basic realm=\"virga\"");
    // A browser is never asked (no password prompt on an origin where function pages run).
    let r = g
        .anon(Method::GET, "/system/functions")
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_none());
    let r = g
        .anon(Method::GET, "/system/functions")
        .basic_auth("admin", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = g
        .sys(Method::GET, "/system/functions")
        .send()
        .await
        .unwrap();
    let (status, text) = answer(r).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"open\""), "{text}");
    assert_eq!(g.get("/healthz").await.status(), 200);
    let r = g
        .anon(Method::POST, "/function/open")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(r).await, (200, "x".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_get_429_with_retry_after_even_with_the_right_one_next() {
    let g = Gateway::start().await;
    let wrong = || {
        g.anon(Method::GET, "/system/info")
            .basic_auth("admin", Some("guess"))
            .send()
    };
    // The first few failures are free.
    for _ in 0..5 {
        assert_eq!(wrong().await.unwrap().status(), 401);
    }
    let r = wrong().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = g.sys(Method::GET, "/system/info").send().await.unwrap();
    assert_eq!(
        r.status(),
        429,
        "blocked for a while after 6 wrong passwords"
    );
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=300).contains(&wait), "Retry-After {wait}");
    let text = r.text().await.unwrap();
    assert!(text.contains("too many"), "{text}");
    // Function calls are not behind the block.
    assert_eq!(g.get("/healthz").await.status(), 200);
}
