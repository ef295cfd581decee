//! Serializing mode against the real binary: one process per request.

use std::time::{Duration, Instant};

use virga_testkit::watchdog::{client, script, wait_for_status, Watchdog};

fn serializing(fprocess: &str, extra: &[(&str, &str)]) -> Watchdog {
    let mut env = vec![("mode", "serializing"), ("fprocess", fprocess)];
    env.extend_from_slice(extra);
    Watchdog::start(&env)
}

#[tokio::test]
async fn cat_echoes_body() {
    let wd = serializing("cat", &[]);
    let c = client();
    let resp = c
        .post(wd.url("/"))
        .header("X-Call-Id", "call-1")
        .body("hello watchdog")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-call-id"], "call-1");
    let secs: f64 = resp.headers()["x-duration-seconds"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs > 0.0 && secs < 30.0);
    assert_eq!(resp.text().await.unwrap(), "hello watchdog");

    // A body much larger than a pipe buffer must not deadlock.
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let resp = c.post(wd.url("/")).body(big.clone()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), big.as_slice());
}

#[tokio::test]
async fn wc_counts_bytes() {
    let wd = serializing("wc -c", &[]);
    let resp = client()
        .post(wd.url("/"))
        .body(vec![b'x'; 12345])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap().trim(), "12345");
}

#[tokio::test]
async fn cgi_variables_are_visible() {
    let wd = serializing("env", &[("content_type", "text/plain")]);
    let resp = client()
        .post(wd.url("/some/path?a=1&b=two"))
        .header("X-Call-Id", "abc-123")
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    let text = resp.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for expected in [
        "Http_Method=POST",
        "Http_Path=/some/path",
        "Http_Query=a=1&b=two",
        "Http_X_Call_Id=abc-123",
        "Http_Content_Type=application/json",
        "Http_ContentLength=2",
        "mode=serializing",
    ] {
        assert!(lines.contains(&expected), "missing {expected} in:\n{text}");
    }
}

#[tokio::test]
async fn non_zero_exit_is_500_with_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "fail.sh", "echo boom >&2\nexit 3\n");
    let wd = serializing(&format!("sh {}", s.display()), &[]);
    let resp = client().post(wd.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert!(resp.headers().contains_key("x-duration-seconds"));
    let body = resp.text().await.unwrap();
    assert!(body.contains("boom"), "{body}");
    assert!(body.contains("exit status 3"), "{body}");
}

#[tokio::test]
async fn missing_command_is_500() {
    let wd = serializing("/definitely/not/a/command", &[]);
    let resp = client().post(wd.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    let text = resp.text().await.unwrap();
    assert!(text.contains("command not found"), "{text}");
}

#[tokio::test]
async fn exec_timeout_kills_and_returns_504() {
    let wd = serializing("sleep 5", &[("exec_timeout", "500ms")]);
    let start = Instant::now();
    let resp = client().post(wd.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_inflight_rejects_with_429() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "slow.sh", "sleep 2\necho done\n");
    let wd = serializing(&format!("sh {}", s.display()), &[("max_inflight", "1")]);
    let c = client();
    wait_for_status(&c, &wd.url("/_/ready"), 200, Duration::from_secs(10)).await;

    let first = tokio::spawn({
        let (c, url) = (c.clone(), wd.url("/"));
        async move { c.post(url).send().await.unwrap() }
    });
    // Ready turns 503 exactly while the single slot is taken.
    wait_for_status(&c, &wd.url("/_/ready"), 503, Duration::from_secs(10)).await;
    let resp = c.post(wd.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp
        .text()
        .await
        .unwrap()
        .contains("Concurrent request limit"));
    // Health is not affected by capacity.
    assert_eq!(
        c.get(wd.url("/_/health")).send().await.unwrap().status(),
        200
    );

    let first = first.await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.text().await.unwrap(), "done\n");
    wait_for_status(&c, &wd.url("/_/ready"), 200, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn sigterm_exits_cleanly() {
    let mut wd = serializing("cat", &[]);
    assert_eq!(
        client()
            .get(wd.url("/_/health"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "OK"
    );
    let status = wd.stop().expect("watchdog exited");
    assert!(status.success(), "{status:?}");
}
