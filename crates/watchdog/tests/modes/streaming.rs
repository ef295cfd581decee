//! Streaming mode against the real binary: stdout is streamed as produced.

use std::time::{Duration, Instant};

use virga_testkit::watchdog::{client, script, Watchdog};

#[tokio::test]
async fn first_chunk_arrives_before_exit() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "slow.sh", "echo first\nsleep 2\necho second\n");
    let wd = Watchdog::start(&[("fprocess", &format!("sh {}", s.display()))]);
    let start = Instant::now();
    let mut resp = client().get(wd.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-duration-seconds"));
    let first = resp.chunk().await.unwrap().expect("first chunk");
    let first_at = start.elapsed();
    assert_eq!(&first[..], b"first\n");
    assert!(first_at < Duration::from_millis(1500), "{first_at:?}");
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"second\n");
    assert!(start.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn body_is_piped_and_env_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(
        dir.path(),
        "echo.sh",
        "printf '%s %s|' \"$Http_Method\" \"$Http_Path\"\ncat\n",
    );
    let wd = Watchdog::start(&[
        ("mode", "streaming"),
        ("fprocess", &format!("sh {}", s.display())),
        ("prefix_logs", "false"),
    ]);
    let resp = client()
        .put(wd.url("/a/b"))
        .header("X-Call-Id", "xyz")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-call-id"], "xyz");
    assert_eq!(resp.text().await.unwrap(), "PUT /a/b|payload");
}

#[tokio::test]
async fn failure_before_output_is_500() {
    let dir = tempfile::tempdir().unwrap();
    let s = script(dir.path(), "fail.sh", "echo boom >&2\nexit 3\n");
    let wd = Watchdog::start(&[("fprocess", &format!("sh {}", s.display()))]);
    let resp = client().post(wd.url("/")).body("x").send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert!(resp.text().await.unwrap().contains("boom"));
}

#[tokio::test]
async fn exec_timeout_returns_504() {
    let wd = Watchdog::start(&[("fprocess", "sleep 5"), ("exec_timeout", "300ms")]);
    let start = Instant::now();
    let resp = client().post(wd.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(start.elapsed() < Duration::from_secs(3));
}
