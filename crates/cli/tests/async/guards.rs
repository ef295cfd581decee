//! What protects the platform from the public async route: callback URLs aimed at internal
//! addresses are refused (at accept and when the callback is sent), the queue's limits answer
//! 429, bodies stay on disk so memory does not grow with what is queued (measured from
//! /proc/PID/status, also across a restart that replays it all), and deliveries are counted as
//! invocations as OpenFaaS counts them.

use std::net::{IpAddr, ToSocketAddrs};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::support::{Backend, Receiver, Setup};
use virga_testkit::script;

const WAIT: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

/// A classic function that sleeps `secs` per call, one call at a time.
fn deploy_sleeper(s: &Setup, name: &str, secs: u32) {
    let sh = script(
        &s.dir,
        &format!("{name}.sh"),
        &format!("cat >/dev/null; sleep {secs}"),
    );
    s.p.deploy_process(
        name,
        &sh,
        json!({"annotations": {"com.virga.async.max_inflight": "1"}}),
    );
}

pub fn callbacks_to_internal_addresses_are_refused() {
    let cb = Receiver::start();
    let port = cb.addr.port();
    let s = Setup::start_bare(Backend::Embedded, &["--callback-retry-for", "2s"], &[]);
    deploy_sleeper(&s, "rec", 0);
    for url in [
        format!("http://127.0.0.1:{port}/cb"),
        format!("http://127.1:{port}/cb"),
        format!("http://2130706433:{port}/cb"),
        format!("http://localhost:{port}/cb"),
        format!("https://LOCALHOST.:{port}/cb"),
        format!("http://[::1]:{port}/cb"),
        format!("http://[::ffff:127.0.0.1]:{port}/cb"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/cb".to_string(),
        "http://192.168.1.1/cb".to_string(),
        "http://100.64.0.1/cb".to_string(),
        format!("http://0.0.0.0:{port}/cb"),
        "http://[fd00::1]/cb".to_string(),
        "http://[fe80::1]/cb".to_string(),
    ] {
        let r = s.call_async("rec", "", &[("X-Callback-Url", &url)]);
        assert_eq!(r.status(), 400, "{url}");
        let text = r.text().unwrap();
        assert!(
            text.contains("X-Callback-Url") && text.contains("--callback-allow-private"),
            "{url}: {text}"
        );
    }
    // A name that resolves to an internal address passes the accept-time check, and is
    // refused when the callback is sent: the resolver drops the address.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let host = host.trim();
    let addrs: Vec<IpAddr> = (host, port)
        .to_socket_addrs()
        .map(|a| a.map(|a| a.ip()).collect())
        .unwrap_or_default();
    if addrs.is_empty() || !addrs.iter().all(|&ip| virga_queue::is_internal(ip)) {
        println!("skipped the resolver check: {host} resolves to {addrs:?}");
        return;
    }
    let url = format!("http://{host}:{port}/cb");
    let r = s.call_async(
        "rec",
        "",
        &[("X-Callback-Url", &url), ("X-Call-Id", "by-name")],
    );
    assert_eq!(r.status(), 202);
    assert!(
        s.p.eventually(WAIT, || !s.dead_letters().is_empty()),
        "{}",
        s.queues()
    );
    let d = &s.dead_letters()[0];
    assert_eq!(
        (d["id"].as_str(), d["kind"].as_str()),
        (Some("by-name"), Some("callback"))
    );
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("internal addresses"), "{reason}");
    if addrs.iter().all(|ip| ip.is_loopback()) {
        assert!(cb.requests().is_empty(), "the callback reached {addrs:?}");
    }
}

pub fn redirects_to_refused_addresses_are_not_followed() {
    // 127.0.0.2 is loopback too, but only 127.0.0.1 is allowed.
    let hidden = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let hidden_port = hidden.local_addr().unwrap().port();
    let answer: &'static str = Box::leak(
        format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.2:{hidden_port}/x\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .into_boxed_str(),
    );
    let cb = Receiver::answering(answer);
    let s = Setup::start_with(Backend::Embedded, &["--callback-retry-for", "30s"]);
    deploy_sleeper(&s, "rec", 0);
    let r = s.call_async(
        "rec",
        "",
        &[("X-Callback-Url", &cb.url), ("X-Call-Id", "redir")],
    );
    assert_eq!(r.status(), 202);
    // Refused at once (not retried for 30 s): a redirect the policy forbids is final.
    assert!(s
        .p
        .eventually(Duration::from_secs(10), || !s.dead_letters().is_empty()));
    let d = &s.dead_letters()[0];
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("127.0.0.2"), "{reason}");
    assert_eq!(cb.requests().len(), 1);
    hidden.set_nonblocking(true).unwrap();
    assert!(hidden.accept().is_err(), "the redirect was followed");
}

pub fn limits_answer_429(b: Backend) {
    let s = Setup::start_with(
        b,
        &[
            "--async-max-depth-per-function",
            "3",
            "--async-max-depth",
            "5",
        ],
    );
    deploy_sleeper(&s, "slow", 30);
    deploy_sleeper(&s, "other", 30);
    for _ in 0..3 {
        assert_eq!(s.call_async("slow", "", &[]).status(), 202);
    }
    let r = s.call_async("slow", "", &[]);
    assert_eq!(r.status(), 429);
    let text = r.text().unwrap();
    assert!(
        text.contains("limit per function") && text.contains("--async-max-depth"),
        "{text}"
    );
    for _ in 0..2 {
        assert_eq!(s.call_async("other", "", &[]).status(), 202);
    }
    let r = s.call_async("other", "", &[]);
    assert_eq!(r.status(), 429);
    let text = r.text().unwrap();
    assert!(text.contains("its limit"), "{text}");
}

pub fn bytes_are_limited_per_function() {
    let s = Setup::start_with(
        Backend::Embedded,
        &["--async-max-bytes-per-function", "3000"],
    );
    deploy_sleeper(&s, "slow", 30);
    deploy_sleeper(&s, "other", 30);
    let body = "b".repeat(1000);
    for _ in 0..2 {
        assert_eq!(s.call_async("slow", &body, &[]).status(), 202);
    }
    let r = s.call_async("slow", &body, &[]);
    assert_eq!(r.status(), 429);
    let text = r.text().unwrap();
    assert!(text.contains("limit per function of 3000 bytes"), "{text}");
    // Another function is not held up by it.
    assert_eq!(s.call_async("other", &body, &[]).status(), 202);
}

/// VmRSS and VmHWM (peak) of process `pid`, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
            * 1024
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

/// Send `n` async calls of `body` to `name` from two threads; all must get 202.
fn send_large(s: &Setup, name: &str, n: usize, body: &'static [u8]) {
    let url = format!("{}/async-function/{name}", s.p.url);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                for _ in 0..n / 2 {
                    let r = http.post(&url).body(body).send().unwrap();
                    assert_eq!(r.status(), 202, "{}", r.text().unwrap());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

pub fn large_calls_stay_on_disk_across_a_restart() {
    const BODY: usize = 4 << 20;
    const ROUND: usize = 24;
    let body: &'static [u8] = Box::leak(vec![b'z'; BODY].into_boxed_slice());
    let mut s = Setup::start_with(
        Backend::Embedded,
        &[
            "--max-async-body-bytes",
            &BODY.to_string(),
            "--async-max-bytes-per-function",
            &(1u64 << 30).to_string(),
        ],
    );
    // One call at a time, each taking a minute: the others wait in the queue.
    deploy_sleeper(&s, "hold", 60);
    send_large(&s, "hold", 2, body);
    let pid = s.p.pid().unwrap();
    let (base, _) = memory(pid);
    send_large(&s, "hold", ROUND, body);
    let (first, _) = memory(pid);
    send_large(&s, "hold", ROUND, body);
    let (second, peak) = memory(pid);
    let queued = (2 * ROUND + 2) as u64 * BODY as u64;
    println!(
        "memory: {} MiB queued; VmRSS {} MiB before, {} MiB after {ROUND} calls, {} MiB after \
         {} (peak {} MiB)",
        queued / MIB,
        base / MIB,
        first / MIB,
        second / MIB,
        2 * ROUND,
        peak / MIB
    );
    let round = ROUND as u64 * BODY as u64;
    assert!(
        second.saturating_sub(base) < round,
        "memory grows with the queued bodies"
    );
    assert!(
        second.saturating_sub(first) < round / 4,
        "the second round of {} MiB grew VmRSS by {} MiB",
        round / MIB,
        second.saturating_sub(first) / MIB
    );
    // Replay at start reads the log in chunks and keeps only the index.
    s.p.kill9();
    s.p.restart();
    let waiting = |q: &serde_json::Value| {
        q["queues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q["depth"].as_u64().unwrap() + q["inflight"].as_u64().unwrap())
            .sum::<u64>()
    };
    let q = s.queues();
    assert_eq!(waiting(&q), (2 * ROUND + 2) as u64, "{q}");
    let (rss, peak) = memory(s.p.pid().unwrap());
    println!(
        "memory after a restart replaying {} MiB: VmRSS {} MiB, peak {} MiB",
        queued / MIB,
        rss / MIB,
        peak / MIB
    );
    assert!(
        peak < base + round / 2,
        "replay peaked at {} MiB",
        peak / MIB
    );
}

pub fn deliveries_count_as_invocations() {
    let s = Setup::start(Backend::Embedded);
    s.deploy_flaky(
        "flaky",
        2,
        503,
        json!({
            "com.openfaas.retry.attempts": "5",
            "com.openfaas.retry.min_wait": "50ms",
            "com.openfaas.retry.max_wait": "100ms",
        }),
    );
    let cb = Receiver::start();
    let r = s.call_async("flaky", "x", &[("X-Callback-Url", &cb.url)]);
    assert_eq!(r.status(), 202);
    let got = cb.wait_for(1, WAIT);
    assert_eq!(got[0].headers["x-function-status"], "200");
    // Three attempts (503, 503, 200), each one invocation, as through OpenFaaS's gateway.
    let f = s.p.get_json("/system/function/flaky");
    assert_eq!(f["invocationCount"], 3.0, "{f}");
    assert_eq!(s.p.invoke("flaky", "sync").status(), 200);
    let list = s.p.get_json("/system/functions");
    let f = list
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "flaky")
        .unwrap();
    assert_eq!(f["invocationCount"], 4.0, "{f}");
    let metrics =
        s.p.anon(Method::GET, "/metrics")
            .send()
            .unwrap()
            .text()
            .unwrap();
    let l = r#"function_name="flaky.openfaas-fn""#;
    for line in [
        format!("gateway_function_invocation_total{{{l},code=\"503\"}} 2"),
        format!("gateway_function_invocation_total{{{l},code=\"200\"}} 2"),
        format!("gateway_function_invocation_started{{{l}}} 4"),
        format!("virga_async_deliveries_total{{{l},code=\"503\"}} 2"),
        format!("virga_async_deliveries_total{{{l},code=\"200\"}} 1"),
    ] {
        assert!(
            metrics.lines().any(|m| m == line),
            "no {line:?} in\n{metrics}"
        );
    }
}
