//! The gateway's edge against misbehaving clients, on the real `virga up` over real sockets:
//! half-open connections far beyond the connection cap (with the platform's open-file limit
//! lowered, as on a small host), request heads and bodies sent too slowly, idle keep-alive
//! connections, password guessing on `/system`, and what browsers are and are not told.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use virga_testkit::{Platform, PASSWORD};

/// `host:port` of a platform URL.
fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

/// Let this test process open as many sockets as the system allows.
fn raise_own_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = l.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
}

/// Whether the server has closed `s` (EOF or reset); consumes nothing else.
fn closed_by_server(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 512];
    let closed = loop {
        match (&*s).read(&mut b) {
            Ok(0) => break true,
            // A refusal's 503 arrives before the close: read on.
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
            Err(_) => break true,
        }
    };
    s.set_nonblocking(false).unwrap();
    closed
}

/// Read until the server closes the connection; what it sent.
fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn half_open_connections_beyond_the_cap_leave_system_and_healthz_answering() {
    raise_own_nofile();
    let dir = tempfile::tempdir().unwrap();
    // At most 1024 open files for the platform, far fewer than the attack's sockets; its soft
    // limit starts at 256, too few for its cap, so this also shows `virga up` raising it.
    let p = Platform::start_limited(
        dir.path(),
        &[
            "--max-connections",
            "32",
            "--reserved-connections",
            "8",
            "--header-read-timeout",
            "120",
        ],
        Some((256, 1024)),
    );
    let addr = addr_of(&p.url);
    // 1500 clients that open a connection, send half a request head, and stall.
    let mut attack = Vec::new();
    for _ in 0..1500 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /function/x HTTP/1.1\r\nHost: victim\r\n")
            .unwrap();
        attack.push(s);
    }
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let health = http.get(format!("{}/healthz", p.url)).send().unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().unwrap(), "OK");
    let info = http
        .get(format!("{}/system/info", p.url))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .unwrap();
    assert_eq!(info.status(), 200);
    assert_eq!(
        info.json::<serde_json::Value>().unwrap()["provider"]["provider"],
        "virga-local"
    );
    // The public routes are what the cap holds back, with a message saying so.
    let public = http.get(format!("{}/function/x", p.url)).send().unwrap();
    assert_eq!(public.status(), 503);
    assert!(public.headers().contains_key("retry-after"));
    assert!(public.text().unwrap().contains("connection limit"));
    // The platform holds no more than its cap and reserve of the attack's connections.
    let bounded = p.eventually(Duration::from_secs(10), || {
        attack.iter().filter(|s| !closed_by_server(s)).count() <= 32 + 8
    });
    let open = attack.iter().filter(|s| !closed_by_server(s)).count();
    assert!(bounded, "{open} of the attack's connections are still open");
    // Once the attackers leave, the public routes answer again.
    drop(attack);
    assert!(p.eventually(Duration::from_secs(10), || {
        http.get(format!("{}/function/x", p.url))
            .send()
            .is_ok_and(|r| r.status() == 404)
    }));
}

#[test]
fn slow_request_heads_and_idle_connections_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_with(
        dir.path(),
        &["--header-read-timeout", "1", "--idle-timeout", "3"],
    );
    let addr = addr_of(&p.url);

    // A head sent one byte every 100 ms never completes: cut off at the head timeout, though
    // the client never stopped sending.
    let mut slow = TcpStream::connect(addr).unwrap();
    let opened = Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .unwrap();
    let cut = loop {
        std::thread::sleep(Duration::from_millis(100));
        if slow.write_all(b"a").is_err() || closed_by_server(&slow) {
            break opened.elapsed();
        }
        assert!(opened.elapsed() < Duration::from_secs(10), "never cut off");
    };
    assert!(cut >= Duration::from_millis(950), "cut off after {cut:?}");
    assert!(cut < Duration::from_secs(5), "cut off only after {cut:?}");

    // A kept-alive connection may idle longer than the head timeout, up to the idle timeout.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"\r\n\r\nOK") {
        let n = idle.read(&mut buf).unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    let rest = read_to_close(&mut idle);
    let idled = answered.elapsed();
    assert_eq!(rest, "");
    assert!(
        idled >= Duration::from_millis(2900),
        "closed after {idled:?}"
    );
    assert!(
        idled < Duration::from_secs(8),
        "closed only after {idled:?}"
    );

    // Clients that send their requests in time are served on the same platform.
    let r = p.anon(Method::GET, "/healthz").send().unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn a_stalled_request_body_gets_408() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_with(dir.path(), &["--body-read-timeout", "1"]);
    p.deploy_process("echo", "cat", json!({}));
    assert_eq!(p.invoke("echo", "warm").status(), 200);

    let mut s = TcpStream::connect(addr_of(&p.url)).unwrap();
    s.write_all(
        b"POST /function/echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .unwrap();
    let sent = Instant::now();
    let answer = read_to_close(&mut s);
    let waited = sent.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 408 "),
        "after {waited:?}: {answer}"
    );
    assert!(answer.contains("--body-read-timeout"), "{answer}");
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    assert!(waited < Duration::from_secs(8), "{waited:?}");
    // A body that arrives in time still gets through.
    assert_eq!(p.invoke("echo", "in time").text().unwrap(), "in time");
}

/// A client whose connections come from `source`. One per address for the whole test: a
/// client per request costs a runtime thread and a connection, and under load that alone
/// kept the flat-out guessing below ten requests a second.
fn from(source: Ipv4Addr) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(IpAddr::V4(source))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// `GET /system/info` through `http` with `password`: status and Retry-After.
fn sign_in(base: &str, http: &reqwest::blocking::Client, password: &str) -> (u16, Option<u64>) {
    let r = http
        .get(format!("{base}/system/info"))
        .basic_auth("admin", Some(password))
        .send()
        .unwrap();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let status = r.status().as_u16();
    if status == 429 {
        assert!(r.text().unwrap().contains("wait"), "429 says what to do");
    }
    (status, retry)
}

#[test]
fn wrong_passwords_back_off_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let console = p.console_url.clone().unwrap();
    let attacker = &from(Ipv4Addr::new(127, 0, 0, 1));
    let other = &from(Ipv4Addr::new(127, 0, 0, 2));

    // A few typos are free.
    for _ in 0..5 {
        assert_eq!(sign_in(&p.url, attacker, "guess"), (401, None));
    }
    // The next wrong one blocks the address: even the right password gets 429 (a guess made
    // now tells nothing), on both listeners.
    assert_eq!(sign_in(&p.url, attacker, "guess").0, 401);
    assert_eq!(sign_in(&p.url, attacker, PASSWORD), (429, Some(1)));
    assert_eq!(sign_in(&console, attacker, "guess"), (429, Some(1)));
    // Another address is not slowed.
    let t = Instant::now();
    assert_eq!(sign_in(&p.url, other, PASSWORD), (200, None));
    assert!(t.elapsed() < Duration::from_secs(1));

    // After the wait, one more wrong guess blocks twice as long.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(sign_in(&p.url, attacker, "guess").0, 401);
    assert_eq!(sign_in(&p.url, attacker, "guess"), (429, Some(2)));
    // Retry-After 2: the block has more than a second to run.
    let blocked = Instant::now();

    // Guessing flat out meanwhile gets no password looked at.
    let (mut checked, mut refused) = (0, 0);
    while blocked.elapsed() < Duration::from_secs(1) {
        match sign_in(&p.url, attacker, "guess").0 {
            401 => checked += 1,
            429 => refused += 1,
            s => panic!("unexpected {s}"),
        }
    }
    eprintln!("flat-out guessing for 1 s: {checked} passwords checked, {refused} refused with 429");
    assert_eq!(checked, 0);
    assert!(refused > 10);

    // The right password gets in once the block is over.
    std::thread::sleep(Duration::from_secs(2).saturating_sub(blocked.elapsed()));
    assert_eq!(sign_in(&p.url, attacker, PASSWORD), (200, None));
}

#[test]
fn browsers_get_no_basic_auth_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let challenge = |headers: &[(&str, &str)]| {
        let mut r = p.anon(Method::GET, "/system/functions");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.send().unwrap();
        assert_eq!(r.status(), 401);
        r.headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string())
    };
    // faas-cli, curl and the SDKs are challenged, as by OpenFaaS.
    assert_eq!(challenge(&[]).as_deref(), Some("Basic realm=\"virga\""));
    assert!(challenge(&[("accept", "application/json")]).is_some());
    // A browser never is, so it never prompts for or caches basic credentials.
    assert_eq!(challenge(&[("sec-fetch-mode", "navigate")]), None);
    assert_eq!(challenge(&[("sec-fetch-mode", "cors")]), None);
    assert_eq!(
        challenge(&[("accept", "text/html,application/xhtml+xml,*/*;q=0.8")]),
        None
    );
}

#[test]
fn function_answers_are_sandboxed_unless_the_function_opts_out() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let csp = |name: &str| {
        let r = p.invoke(name, "x");
        r.headers()
            .get_all("content-security-policy")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    p.deploy_process("plain", "cat", json!({}));
    assert_eq!(csp("plain"), ["sandbox"]);
    assert_eq!(csp("not-deployed"), ["sandbox"], "errors too");
    p.deploy_process(
        "page",
        "cat",
        json!({"annotations": {"virga.http.sandbox": "false"}}),
    );
    assert!(csp("page").is_empty());
    // An update takes effect at once, without a restart.
    let r = p
        .sys(Method::PUT, "/system/functions")
        .json(&json!({"service": "page", "image": "", "envProcess": "cat"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        p.eventually(Duration::from_secs(30), || p.invoke("page", "x").status()
            == 200)
    );
    assert_eq!(csp("page"), ["sandbox"]);
}
