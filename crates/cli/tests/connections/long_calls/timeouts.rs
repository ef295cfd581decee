//! Calls longer than the gateway's own timeout: a function's longer `exec_timeout` (hours)
//! wins over `--upstream-timeout`, a function that sets none keeps the gateway's; and the
//! sockets of a call in progress have TCP keep-alive on, so idle intermediaries keep them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use super::support::Fixture;

#[test]
fn a_call_with_a_two_hour_exec_timeout_outlives_the_upstream_timeout() {
    let f = Fixture::start(&["--upstream-timeout", "2s"]);
    f.deploy_http("long", json!({"exec_timeout": "2h"}), json!({}));
    f.deploy_http("short", json!({}), json!({}));
    let started = Instant::now();
    let r = f.p.invoke("long/sleep?s=5", "");
    let (status, took) = (r.status().as_u16(), started.elapsed());
    assert_eq!((status, r.text().unwrap()), (200, "slept".to_string()));
    assert!(took >= Duration::from_secs(5), "{took:?}");
    // A function that sets no exec_timeout has the gateway's limit.
    let started = Instant::now();
    let r = f.p.invoke("short/sleep?s=5", "");
    let took = started.elapsed();
    assert_eq!(r.status(), 504);
    let text = r.text().unwrap();
    assert!(text.contains("2s"), "{text}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

/// One established TCP socket as `ss` shows it.
#[derive(Debug)]
struct Socket {
    local: u16,
    peer: u16,
    process: String,
    keepalive: bool,
}

/// The port of `HOST:PORT` (0 for `*`).
fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap_or(0)
}

/// `ss` of the TCP sockets in `state` (with owners and timers).
fn sockets(state: &str) -> Vec<Socket> {
    let out = Command::new("ss")
        .args(["-Htnpo", "state", state])
        .output()
        .expect("run ss (iproute2)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let process = l
                .split_once("users:((\"")
                .and_then(|(_, r)| r.split_once('"'))
                .map(|(name, _)| name.to_string())?;
            Some(Socket {
                local: port(cols.get(2)?),
                peer: port(cols.get(3)?),
                process,
                keepalive: l.contains("timer:(keepalive"),
            })
        })
        .collect()
}

#[test]
fn the_sockets_of_a_call_have_tcp_keepalive() {
    // No warm pool: the only watchdog and Python server are the function's.
    let f = Fixture::start(&["--warm-pool", "0"]);
    f.deploy_http("quiet", json!({}), json!({}));
    assert_eq!(f.p.invoke("quiet", "").status(), 200);
    let mut client = TcpStream::connect(f.addr()).unwrap();
    write!(
        client,
        "GET /function/quiet/events?n=2&quiet=4 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .unwrap();
    let mut first = [0u8; 64];
    assert!(client.read(&mut first).unwrap() > 0);
    let mine = client.local_addr().unwrap().port();
    let gateway = port(&f.addr());
    let listening = sockets("listening");
    let watchdog = listening
        .iter()
        .find(|s| s.process == "virga-watchdog")
        .map(|s| s.local)
        .expect("the instance's watchdog listens");
    let upstream = listening
        .iter()
        .find(|s| s.process.starts_with("python"))
        .map(|s| s.local)
        .expect("the function listens");
    let now = sockets("established");
    let find = |what: &str, hit: &dyn Fn(&Socket) -> bool| {
        let all: Vec<&Socket> = now.iter().filter(|s| hit(s)).collect();
        assert!(!all.is_empty(), "no socket {what}: {now:#?}");
        assert!(
            all.iter().any(|s| s.keepalive),
            "no keep-alive on the socket {what}: {all:#?}"
        );
    };
    find("the gateway accepted from the client", &|s| {
        s.local == gateway && s.peer == mine
    });
    find("from the gateway to the watchdog", &|s| {
        s.process == "virga" && s.peer == watchdog
    });
    find("the watchdog accepted from the gateway", &|s| {
        s.process == "virga-watchdog" && s.local == watchdog
    });
    find("from the watchdog to the function", &|s| {
        s.process == "virga-watchdog" && s.peer == upstream
    });
}
