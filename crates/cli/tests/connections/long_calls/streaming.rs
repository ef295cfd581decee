//! Streamed answers and bodies through the gateway: server-sent events arrive one by one in
//! http and streaming modes, a request body reaches the function chunk by chunk while its
//! answer streams back, a function that opts in (`virga.http.stream-request`) takes bodies
//! beyond the size and pause limits, a quiet stream is not cut by any idle limit, and the
//! stream of an instance drained by a scale-down ends whole after the grace.

use std::time::Duration;

use serde_json::json;

use super::support::{assert_one_by_one, read_events, Fixture, Raw};

const SSE_PY: &str = r#"
import sys, time
for i in range(5):
    if i:
        time.sleep(0.3)
    sys.stdout.write("id: %d\ndata: event %d %.6f\n\n" % (i, i, time.time()))
    sys.stdout.flush()
"#;

const ECHO_PY: &str = r#"
import sys
while True:
    line = sys.stdin.readline()
    if not line:
        break
    sys.stdout.write("got:" + line)
    sys.stdout.flush()
"#;

#[test]
fn server_sent_events_arrive_one_by_one_in_http_and_streaming_modes() {
    let f = Fixture::start(&[]);
    f.deploy_http("sse", json!({}), json!({}));
    let script = f.file("sse.py", SSE_PY);
    f.deploy_streaming(
        "sse-stream",
        &format!("python3 {script}"),
        json!({"content_type": "text/event-stream"}),
    );
    let gap = Duration::from_millis(300);
    let http = read_events(&f.p, "/function/sse/events?n=5&gap=0.3");
    assert_one_by_one(&http, 5, gap);
    let streaming = read_events(&f.p, "/function/sse-stream");
    assert_one_by_one(&streaming, 5, gap);
}

/// Send `n` lines one at a time, each only once the answer to the previous one came back.
fn ping_pong(f: &Fixture, path: &str, n: usize) {
    let mut raw = Raw::post_chunked(&f.addr(), path);
    for i in 0..n {
        assert!(raw.chunk(&format!("ping {i}\n")));
        assert!(
            raw.wait_for(&format!("got:ping {i}\n"), Duration::from_secs(10)),
            "{path}: chunk {i} of the body did not reach the function (or its answer did not \
             come back) while the body was still being sent; got: {}",
            raw.text()
        );
    }
    assert!(raw.end());
    let (status, body) = raw.answer(Duration::from_secs(10));
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("0\r\n\r\n"), "{body}");
}

#[test]
fn a_request_body_streams_to_the_function_while_its_answer_streams_back() {
    let f = Fixture::start(&[]);
    f.deploy_http("echo", json!({}), json!({}));
    let script = f.file("echo.py", ECHO_PY);
    f.deploy_streaming("echo-stream", &format!("python3 {script}"), json!({}));
    ping_pong(&f, "/function/echo/echo", 5);
    ping_pong(&f, "/function/echo-stream", 5);
}

/// POST a chunked body of `chunks` times 1 KiB to `path`, pausing `pause` after the first
/// chunk; the status and the answer.
fn upload(f: &Fixture, path: &str, chunks: usize, pause: Duration) -> (u16, String) {
    let mut raw = Raw::post_chunked(&f.addr(), path);
    let kib = "x".repeat(1024);
    for i in 0..chunks {
        if !raw.chunk(&kib) {
            break;
        }
        if i == 0 {
            std::thread::sleep(pause);
        }
    }
    raw.end();
    raw.answer(Duration::from_secs(15))
}

#[test]
fn a_function_that_opts_in_takes_streamed_bodies_beyond_the_size_and_pause_limits() {
    let f = Fixture::start(&["--max-body-bytes", "4096", "--body-read-timeout", "1"]);
    let opted = json!({"annotations": {"virga.http.stream-request": "true"}});
    f.deploy_http("count-in", json!({}), opted);
    f.deploy_http("count", json!({}), json!({}));
    let short = Duration::from_millis(10);
    let pause = Duration::from_millis(2500);
    // 64 KiB, 16 times the limit, and a pause of 2.5 s, over twice --body-read-timeout.
    let (status, body) = upload(&f, "/function/count-in/count", 64, pause);
    assert_eq!((status, body.contains("65536")), (200, true), "{body}");
    // Without the annotation, both limits hold.
    let (status, body) = upload(&f, "/function/count/count", 12, short);
    assert_eq!(status, 413, "{body}");
    let (status, body) = upload(&f, "/function/count/count", 2, pause);
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("--body-read-timeout"), "{body}");
    let (status, body) = upload(&f, "/function/count/count", 2, short);
    assert_eq!((status, body.contains("2048")), (200, true), "{body}");
}

#[test]
fn a_quiet_stream_is_not_cut_by_an_idle_limit() {
    // Every limit of the gateway's is shorter than the stream's silence.
    let f = Fixture::start(&[
        "--idle-timeout",
        "1",
        "--body-read-timeout",
        "1",
        "--header-read-timeout",
        "1",
        "--upstream-timeout",
        "2",
    ]);
    f.deploy_http("quiet", json!({"exec_timeout": "3s"}), json!({}));
    let events = read_events(&f.p, "/function/quiet/events?n=3&gap=0.1&quiet=5");
    assert_eq!(events.len(), 3, "{events:#?}");
    // 5 s apart as written (the first may have come a little late).
    assert!(
        events[1].at - events[0].at >= Duration::from_millis(4500),
        "{events:#?}"
    );
    assert!(events.iter().all(|e| e.lag < 0.5), "{events:#?}");
}

#[test]
fn a_stream_of_a_drained_instance_ends_whole_after_the_grace() {
    let f = Fixture::start(&[]);
    let grace = json!({"annotations": {"virga.connection.drain-grace": "1s"}});
    f.deploy_http("sse", json!({}), grace);
    let scaled = std::time::Instant::now();
    let events = std::thread::scope(|s| {
        let reader = s.spawn(|| read_events(&f.p, "/function/sse/events?n=1000&gap=0.1"));
        std::thread::sleep(Duration::from_secs(1));
        let r = f.p.send_json(
            reqwest::Method::POST,
            "/system/scale-function/sse",
            json!({"serviceName": "sse", "replicas": 0}),
        );
        assert!(r.status < 300, "{}", r.text);
        // The stream ends as a complete answer (a cut one fails the reader's read).
        reader.join().expect("the stream ended whole, not cut")
    });
    assert!(events.len() >= 5 && events.len() < 1000, "{}", events.len());
    assert!(
        scaled.elapsed() < Duration::from_secs(10),
        "ended after the 1 s grace: {:?}",
        scaled.elapsed()
    );
}
