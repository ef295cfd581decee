//! HTTP mode against the real binary with python3 upstreams.

use std::time::{Duration, Instant};

use virga_testkit::free_port;
use virga_testkit::watchdog::{client, script, wait_for_status, Watchdog};

const UPSTREAM_PY: &str = r#"
import http.server, os, sys, time
time.sleep(float(os.environ.get("UPSTREAM_DELAY", "0")))

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, body):
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Upstream", "yes")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(3)
        self.reply(f"pid={os.getpid()} path={self.path} callid={self.headers.get('X-Call-Id')}".encode())

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        self.reply(b"echo:" + self.rfile.read(n))

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"#;

struct Setup {
    wd: Watchdog,
    upstream_port: u16,
    _dir: tempfile::TempDir,
}

fn start(extra: &[(&str, &str)]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let py = script(dir.path(), "upstream.py", UPSTREAM_PY);
    let port = free_port();
    let fprocess = format!("python3 {} {port}", py.display());
    let upstream = format!("http://127.0.0.1:{port}");
    let mut env = vec![
        ("mode", "http"),
        ("fprocess", fprocess.as_str()),
        ("upstream_url", upstream.as_str()),
    ];
    env.extend_from_slice(extra);
    Setup {
        wd: Watchdog::start(&env),
        upstream_port: port,
        _dir: dir,
    }
}

fn pid_of(body: &str) -> i32 {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {body:?}"))
}

#[tokio::test]
async fn health_turns_ready_and_requests_are_proxied() {
    // The upstream waits before listening, so the first probe must fail.
    let s = start(&[("UPSTREAM_DELAY", "1.5")]);
    let c = client();
    let health = c.get(s.wd.url("/_/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    wait_for_status(&c, &s.wd.url("/_/health"), 200, Duration::from_secs(20)).await;
    assert_eq!(
        c.get(s.wd.url("/_/ready")).send().await.unwrap().status(),
        200
    );

    let resp = c
        .get(s.wd.url("/some/path?x=1"))
        .header("X-Call-Id", "cid-7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "yes");
    assert_eq!(resp.headers()["x-call-id"], "cid-7");
    assert!(resp.headers().contains_key("x-duration-seconds"));
    let body = resp.text().await.unwrap();
    assert!(body.contains("path=/some/path?x=1"), "{body}");
    assert!(body.contains("callid=cid-7"), "{body}");

    let resp = c.post(s.wd.url("/echo")).body("ping").send().await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.text().await.unwrap(), "echo:ping");
}

#[tokio::test]
async fn static_file_server_upstream() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from python").unwrap();
    let port = free_port();
    let fprocess = format!(
        "python3 -m http.server {port} --bind 127.0.0.1 --directory {}",
        dir.path().display()
    );
    let upstream = format!("http://127.0.0.1:{port}");
    let wd = Watchdog::start(&[
        ("mode", "http"),
        ("fprocess", &fprocess),
        ("upstream_url", &upstream),
    ]);
    let c = client();
    wait_for_status(&c, &wd.url("/_/ready"), 200, Duration::from_secs(20)).await;
    let resp = c.get(wd.url("/hello.txt")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-duration-seconds"));
    assert_eq!(resp.text().await.unwrap(), "hello from python");
    let missing = c.get(wd.url("/nope.txt")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn killed_upstream_is_restarted() {
    let s = start(&[]);
    let c = client();
    wait_for_status(&c, &s.wd.url("/_/health"), 200, Duration::from_secs(20)).await;
    let body = c
        .get(s.wd.url("/pid"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let old = pid_of(&body);
    // SAFETY: kill(2) on the upstream process we started.
    unsafe {
        libc::kill(old, libc::SIGKILL);
    }
    // Once the watchdog has seen the process go, a request is held through the restart
    // (at least the 100 ms back-off) and answered by the new process.
    wait_for_status(&c, &s.wd.url("/_/health"), 503, Duration::from_secs(5)).await;
    let resp = c.get(s.wd.url("/pid")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let new = pid_of(&resp.text().await.unwrap());
    assert_ne!(new, old, "answered by the killed process");
    wait_for_status(&c, &s.wd.url("/_/health"), 200, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn exec_timeout_returns_504() {
    let s = start(&[("exec_timeout", "500ms")]);
    let c = client();
    wait_for_status(&c, &s.wd.url("/_/health"), 200, Duration::from_secs(20)).await;
    let started = Instant::now();
    let resp = c.get(s.wd.url("/slow")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn shutdown_stops_the_upstream() {
    let mut s = start(&[]);
    let c = client();
    wait_for_status(&c, &s.wd.url("/_/health"), 200, Duration::from_secs(20)).await;
    let status = s.wd.stop().expect("watchdog exited");
    assert!(status.success(), "{status:?}");
    // The upstream must be gone with the watchdog.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", s.upstream_port)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "upstream still accepting after shutdown"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn upstream_that_never_listens_is_503_after_exec_timeout() {
    // The process runs but never listens on upstream_url: a request is held while it might
    // still start serving, up to exec_timeout, then answered 503.
    let port = free_port();
    let upstream = format!("http://127.0.0.1:{port}");
    let wd = Watchdog::start(&[
        ("mode", "http"),
        ("fprocess", "sleep 60"),
        ("upstream_url", &upstream),
        ("exec_timeout", "1s"),
    ]);
    let c = client();
    wait_for_status(&c, &wd.url("/_/health"), 503, Duration::from_secs(5)).await;
    let started = Instant::now();
    let resp = c.get(wd.url("/x")).send().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(resp.status(), 503);
    let text = resp.text().await.unwrap();
    assert!(text.contains("not serving"), "{text}");
    assert!(
        waited >= Duration::from_millis(900),
        "answered after {waited:?}"
    );
}

/// An upstream that closes its listener after one answer and exits a moment later (the
/// window in which a process has died but its supervisor has not seen it yet).
const ONE_SHOT_PY: &str = r#"
import os, socket, sys, time
l = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    c, _ = l.accept()
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = c.recv(65536)
        if not more:
            break
        buf += more
    if b"\r\n\r\n" in buf:
        break
    c.close()  # a readiness probe: connected, sent nothing
l.close()
head, _, rest = buf.partition(b"\r\n\r\n")
n = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0)
while len(rest) < n:
    rest += c.recv(65536)
body = b"pid=%d got=%s" % (os.getpid(), rest)
c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
c.close()
time.sleep(0.3)
"#;

/// A request that finds the upstream refusing connections because its process just died
/// is held until the restarted process serves, then sent with its body: it never reached the
/// dead one.
#[tokio::test]
async fn a_request_refused_by_a_dying_upstream_waits_for_its_restart() {
    let dir = tempfile::tempdir().unwrap();
    let py = script(dir.path(), "oneshot.py", ONE_SHOT_PY);
    let port = free_port();
    let fprocess = format!("python3 {} {port}", py.display());
    let upstream = format!("http://127.0.0.1:{port}");
    let wd = Watchdog::start(&[
        ("mode", "http"),
        ("fprocess", fprocess.as_str()),
        ("upstream_url", upstream.as_str()),
    ]);
    let c = client();
    wait_for_status(&c, &wd.url("/_/health"), 200, Duration::from_secs(20)).await;
    let first = c.post(wd.url("/")).body("one").send().await.unwrap();
    assert_eq!(first.status(), 200);
    let first = first.text().await.unwrap();
    assert!(first.ends_with("got=one"), "{first}");
    for body in ["two", "three"] {
        let r = c.post(wd.url("/")).body(body).send().await.unwrap();
        assert_eq!(r.status(), 200, "{body}");
        let text = r.text().await.unwrap();
        assert!(text.ends_with(&format!("got={body}")), "{text}");
        assert_ne!(pid_of(&text), pid_of(&first));
    }
}

/// An upstream that answers one request on a kept-alive connection, then dies with the next
/// request on that connection unread (`MODE=unread`: the kernel resets the connection) or
/// after reading it (`MODE=read`: a plain close).
const DIES_KEPT_ALIVE_PY: &str = r#"
import os, socket, sys, time
l = socket.create_server(("127.0.0.1", int(sys.argv[1])))
def request(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        more = c.recv(65536)
        if not more:
            return None
        buf += more
    return buf
while True:
    c, _ = l.accept()
    if request(c) is not None:
        break
    c.close()  # a readiness probe
body = b"pid=%d" % os.getpid()
c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
if os.environ.get("MODE") == "read":
    request(c)
else:
    l.close()  # no later connection can wait in this process's backlog
    time.sleep(0.3)
os._exit(0)
"#;

async fn kept_alive_death(mode: &str) -> (String, reqwest::Response) {
    let dir = tempfile::tempdir().unwrap();
    let py = script(dir.path(), "dies.py", DIES_KEPT_ALIVE_PY);
    let port = free_port();
    let fprocess = format!("python3 {} {port}", py.display());
    let upstream = format!("http://127.0.0.1:{port}");
    let wd = Watchdog::start(&[
        ("mode", "http"),
        ("fprocess", fprocess.as_str()),
        ("upstream_url", upstream.as_str()),
        ("MODE", mode),
    ]);
    let c = client();
    wait_for_status(&c, &wd.url("/_/health"), 200, Duration::from_secs(20)).await;
    let first = c.get(wd.url("/")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let first = first.text().await.unwrap();
    let second = c.get(wd.url("/again")).send().await.unwrap();
    drop(dir);
    (first, second)
}

/// A request the dying upstream never read (its connection was reset, and no byte of a body
/// was sent) is sent again to the restarted process; one it read before dying is not (it may
/// have run): 502.
#[tokio::test]
async fn only_requests_a_dead_upstream_never_read_are_sent_again() {
    let (first, second) = kept_alive_death("unread").await;
    let status = second.status();
    let text = second.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert_ne!(pid_of(&text), pid_of(&first), "{text}");
    let (_, second) = kept_alive_death("read").await;
    assert_eq!(second.status(), 502);
}
