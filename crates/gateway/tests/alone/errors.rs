//! Provider errors become 404/429/503, upstream failures 502/504, oversized bodies 413, an
//! OOM kill a 500 that says so; a refused connection is retried on another instance.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Body, Method};
use serde_json::json;
use virga_gateway::GatewayConfig;

use crate::{answer, Gateway};

/// A request body that stays open until the returned sender is dropped.
fn open_body() -> (tokio::sync::mpsc::Sender<Vec<u8>>, Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    (tx, Body::wrap_stream(stream))
}

/// Wait (10 s at most) until `path` exists.
async fn appears(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_errors_answer_503_and_429() {
    let g = Gateway::start().await;
    g.deploy(
        "idle",
        "cat",
        json!({"labels": {"com.openfaas.scale.min": "0"}}),
    )
    .await;
    let (status, text) = answer(g.get("/function/idle").await).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("no ready instance"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    // Nothing is answered before the body ends: the lease is held until then.
    let process = format!("sh -c 'touch {}; wc -c'", marker.display());
    g.deploy(
        "single",
        &process,
        json!({"envVars": {"max_inflight": "1"}}),
    )
    .await;
    let (tx, body) = open_body();
    let first = g.anon(Method::POST, "/function/single").body(body).send();
    let first = tokio::spawn(first);
    tx.send(b"held".to_vec()).await.unwrap();
    // The first call is in its function: the instance's only slot is taken.
    appears(&marker).await;
    let r = g
        .anon(Method::POST, "/function/single")
        .body("second")
        .send()
        .await
        .unwrap();
    let (status, text) = answer(r).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("at capacity"), "{text}");
    drop(tx);
    let (status, text) = answer(first.await.unwrap().unwrap()).await;
    assert_eq!((status, text.trim()), (200, "4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_instance() {
    let g = Gateway::start().await;
    g.deploy("echo", "cat", json!({})).await;
    let r = g
        .anon(Method::POST, "/function/echo")
        .body("one")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(r).await, (200, "one".to_string()));
    let before = g.provider.instances("echo");
    g.provider.kill_instances("echo");
    let r = g
        .anon(Method::POST, "/function/echo")
        .body("two")
        .send()
        .await
        .unwrap();
    assert_eq!(answer(r).await, (200, "two".to_string()));
    let after = g.provider.instances("echo");
    assert_eq!(after.len(), 1);
    assert_ne!(before, after, "the call went to a replacement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_function_gets_504_and_a_dying_one_502() {
    let g = Gateway::start_with(GatewayConfig {
        upstream_timeout: Duration::from_secs(1),
        ..GatewayConfig::default()
    })
    .await;
    g.deploy("slow", "sleep 5", json!({})).await;
    let t = Instant::now();
    let (status, text) = answer(g.get("/function/slow").await).await;
    assert_eq!(status, 504, "{text}");
    assert!(text.contains("did not answer within 1s"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let process = format!("sh -c 'touch {}; exec sleep 3'", marker.display());
    g.deploy("dying", &process, json!({})).await;
    let call = tokio::spawn(g.anon(Method::GET, "/function/dying").send());
    appears(&marker).await;
    // The instance dies with the call in flight: nothing to retry, the gateway says so.
    g.provider.kill_instances("dying");
    let (status, text) = answer(call.await.unwrap().unwrap()).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("function \"dying\""), "{text}");
    assert!(text.contains("did not answer"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413_declared_or_streamed() {
    let g = Gateway::start_with(GatewayConfig {
        max_body_bytes: 1024,
        ..GatewayConfig::default()
    })
    .await;
    g.deploy("count", "wc -c", json!({})).await;
    let call = |body: Body| g.anon(Method::POST, "/function/count").body(body).send();
    let (status, text) = answer(call(Body::from(vec![b'x'; 1024])).await.unwrap()).await;
    assert_eq!((status, text.trim()), (200, "1024"));
    let (status, text) = answer(call(Body::from(vec![b'x'; 1025])).await.unwrap()).await;
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains("larger than the limit of 1024 bytes"),
        "{text}"
    );
    // Without a Content-Length the limit holds as the body streams in.
    let (tx, body) = open_body();
    let streamed = tokio::spawn(call(body));
    for _ in 0..3 {
        if tx.send(vec![b'y'; 512]).await.is_err() {
            break;
        }
    }
    drop(tx);
    let (status, text) = answer(streamed.await.unwrap().unwrap()).await;
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains("larger than the limit of 1024 bytes"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_function_passes_its_500_and_an_oom_kill_is_named() {
    let g = Gateway::start().await;
    g.deploy("broken", "sh -c 'echo broken >&2; exit 3'", json!({}))
        .await;
    let (status, text) = answer(g.get("/function/broken").await).await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("failed with exit status 3"), "{text}");
    assert!(text.contains("broken"), "{text}");
    g.provider.report_oom_kill("broken");
    let (status, text) = answer(g.get("/function/broken").await).await;
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("ran out of memory"), "{text}");
    assert!(text.contains("raise limits.memory"), "{text}");
    // Reported once, named once.
    let (status, text) = answer(g.get("/function/broken").await).await;
    assert_eq!(status, 500, "{text}");
    assert!(!text.contains("ran out of memory"), "{text}");
}
