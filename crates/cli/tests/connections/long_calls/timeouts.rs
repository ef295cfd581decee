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

/// One TCP socket as `ss` shows it.
#[derive(Debug)]
struct Socket {
    local: u16,
    peer: u16,
    process: String,
    /// Whether its process is the platform `root` or one of its descendants.
    ours: bool,
    keepalive: bool,
    /// The line, for messages.
    line: String,
}

/// The port of `HOST:PORT` (0 for `*`).
fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap_or(0)
}

/// Whether process `pid` is `root` or descends from it.
fn descends(mut pid: u32, root: u32) -> bool {
    while pid > 1 {
        if pid == root {
            return true;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1));
        pid = parent.and_then(|p| p.parse().ok()).unwrap_or(0);
    }
    false
}

/// `ss` of the TCP sockets in `state` (with owners and timers); the platform is `root`.
fn sockets(state: &str, root: u32) -> Vec<Socket> {
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
            let pid = l
                .split_once("pid=")
                .and_then(|(_, r)| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|p| p.parse().ok())?;
            Some(Socket {
                ours: descends(pid, root),
                local: port(cols.get(2)?),
                peer: port(cols.get(3)?),
                process,
                keepalive: l.contains("timer:(keepalive"),
                line: l.to_string(),
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
    // Other tests' platforms may run beside this one: only this one's processes count.
    let root = f.p.pid().unwrap();
    let listening = sockets("listening", root);
    let watchdog = listening
        .iter()
        .find(|s| s.ours && s.process == "virga-watchdog")
        .map(|s| s.local)
        .expect("the instance's watchdog listens");
    let upstream = listening
        .iter()
        .find(|s| s.ours && s.process.starts_with("python"))
        .map(|s| s.local)
        .expect("the function listens");
    type Hit = Box<dyn Fn(&Socket) -> bool>;
    let hops: [(&str, Hit); 4] = [
        (
            "the gateway accepted from the client",
            Box::new(move |s| s.local == gateway && s.peer == mine),
        ),
        (
            "from the gateway to the watchdog",
            Box::new(move |s| s.ours && s.process == "virga" && s.peer == watchdog),
        ),
        (
            "the watchdog accepted from the gateway",
            Box::new(move |s| s.ours && s.process == "virga-watchdog" && s.local == watchdog),
        ),
        (
            "from the watchdog to the function",
            Box::new(move |s| s.ours && s.process == "virga-watchdog" && s.peer == upstream),
        ),
    ];
    // A socket whose last bytes are not acknowledged yet shows its retransmission timer
    // instead: look again (the call stays quiet for 4 s).
    let deadline = Instant::now() + Duration::from_secs(3);
    let (missing, now) = loop {
        let now = sockets("established", root);
        let missing: Vec<String> = hops
            .iter()
            .filter_map(|(what, hit)| {
                let all: Vec<&Socket> = now.iter().filter(|s| hit(s)).collect();
                (!all.iter().any(|s| s.keepalive))
                    .then(|| format!("no keep-alive on the socket {what}: {all:#?}"))
            })
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break (missing, now);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let lines: Vec<&str> = now.iter().map(|s| s.line.trim()).collect();
    assert!(
        missing.is_empty(),
        "{}\nwatchdog {watchdog}, function {upstream}, sockets:\n{}",
        missing.join("\n"),
        lines.join("\n")
    );
}
