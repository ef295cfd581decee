//! What the long-call tests share: a platform with a scratch directory, an http-mode Python
//! function that streams (server-sent events, an echo of a streamed request body, a slow
//! answer that records its calls), a streaming-mode one, and clients that timestamp what
//! arrives.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use virga_testkit::{free_port, Platform};

/// A platform on a fresh data directory, with a directory for the functions' files.
pub struct Fixture {
    pub p: Platform,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Fixture {
    /// `virga up` with `extra` arguments.
    pub fn start(extra: &[&str]) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let p = Platform::start_with(&dir.join("data"), extra);
        Fixture { p, dir, _tmp: tmp }
    }

    /// Deploy [`STREAM_PY`] in http mode as `name`, with `env` added to its envVars and
    /// `extra` to the deployment; its calls are recorded in `DIR/NAME.calls`.
    pub fn deploy_http(&self, name: &str, env: Value, extra: Value) -> PathBuf {
        let script = self.dir.join("stream.py");
        std::fs::write(&script, STREAM_PY).unwrap();
        let calls = self.dir.join(format!("{name}.calls"));
        let mut vars = json!({
            "mode": "http",
            "upstream_url": format!("http://127.0.0.1:{}", free_port()),
            "CALLS": calls.display().to_string(),
        });
        merge(&mut vars, env);
        let mut body = json!({"envVars": vars});
        merge(&mut body, extra);
        self.p
            .deploy_process(name, &format!("python3 {}", script.display()), body);
        calls
    }

    /// Deploy `process` in streaming mode (one process per call, stdout streamed back).
    pub fn deploy_streaming(&self, name: &str, process: &str, env: Value) {
        let mut vars = json!({"mode": "streaming"});
        merge(&mut vars, env);
        self.p
            .deploy_process(name, process, json!({"envVars": vars}));
    }

    /// Write `body` to `DIR/name` and return its path.
    pub fn file(&self, name: &str, body: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, body).unwrap();
        path.display().to_string()
    }

    /// The gateway's `host:port`.
    pub fn addr(&self) -> String {
        self.p.url.trim_start_matches("http://").to_string()
    }
}

fn merge(into: &mut Value, from: Value) {
    if let Value::Object(m) = from {
        for (k, v) in m {
            into[k] = v;
        }
    }
}

/// Seconds since the Unix epoch, as Python's `time.time()`.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// One server-sent event as it arrived.
#[derive(Debug)]
pub struct Event {
    /// When it arrived, since the request was sent.
    pub at: Duration,
    /// How long after the function wrote it (its `data:` carries `time.time()`).
    pub lag: f64,
    /// Its `data:` line.
    pub data: String,
}

/// GET `path` on the gateway and read the server-sent events of the answer as they arrive;
/// asserts a 200 `text/event-stream`.
pub fn read_events(p: &Platform, path: &str) -> Vec<Event> {
    let sent = Instant::now();
    let mut resp = p.anon(reqwest::Method::GET, path).send().unwrap();
    assert_eq!(resp.status(), 200, "{path}");
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("text/event-stream"), "{path}: {ct}");
    let mut events = Vec::new();
    let mut pending = String::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = resp.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        let (at, now) = (sent.elapsed(), unix_now());
        pending.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or_default()
                .to_string();
            let stamp: f64 = data.rsplit(' ').next().unwrap().parse().unwrap();
            events.push(Event {
                at,
                lag: now - stamp,
                data,
            });
        }
    }
    events
}

/// Check that `events` (`n` of them, written `gap` apart) arrived one by one: each soon after
/// the function wrote it (buffered, the first would wait for the last), spread out as they
/// were written.
pub fn assert_one_by_one(events: &[Event], n: usize, gap: Duration) {
    assert_eq!(events.len(), n, "{events:#?}");
    for (i, e) in events.iter().enumerate() {
        assert!(e.data.starts_with(&format!("event {i} ")), "{events:#?}");
        assert!(
            e.lag < 0.5,
            "event {i} arrived {:.3} s after it was written: {events:#?}",
            e.lag
        );
    }
    let spread = events[n - 1].at - events[0].at;
    assert!(
        spread > gap * (n as u32 - 1) / 2,
        "events arrived together: {events:#?}"
    );
}

/// A raw HTTP/1.1 connection to the gateway, for a request whose body is sent bit by bit
/// while the answer is read.
pub struct Raw {
    s: TcpStream,
    got: Vec<u8>,
}

impl Raw {
    /// Send the head of a chunked `POST path`.
    pub fn post_chunked(addr: &str, path: &str) -> Raw {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        )
        .unwrap();
        Raw { s, got: Vec::new() }
    }

    /// Send one chunk of the body (false if the gateway no longer reads it).
    pub fn chunk(&mut self, data: &str) -> bool {
        write!(self.s, "{:x}\r\n{data}\r\n", data.len()).is_ok() && self.s.flush().is_ok()
    }

    /// End the body.
    pub fn end(&mut self) -> bool {
        self.s.write_all(b"0\r\n\r\n").is_ok()
    }

    /// Read until `what` is in the answer (true) or `limit` passes (false).
    pub fn wait_for(&mut self, what: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.text().contains(what) {
                return true;
            }
            if !self.read_more() {
                break;
            }
        }
        self.text().contains(what)
    }

    /// Read the whole answer (within `limit`): its status and body (still chunked if it was).
    pub fn answer(&mut self, limit: Duration) -> (u16, String) {
        let deadline = Instant::now() + limit;
        while !self.complete() && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if !self.wait_for("\r\n\r\n", left) || !self.read_more() {
                break;
            }
        }
        let text = self.text();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, body.to_string())
    }

    /// Whether a whole answer was read: a Content-Length body, or the end of a chunked one.
    fn complete(&self) -> bool {
        let text = self.text();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let len = head.lines().find_map(|l| {
            let l = l.to_ascii_lowercase();
            l.strip_prefix("content-length:")
                .and_then(|n| n.trim().parse::<usize>().ok())
        });
        match len {
            Some(n) => body.len() >= n,
            None => body.ends_with("0\r\n\r\n"),
        }
    }

    /// Read once more (waiting up to the read timeout); false once the connection ended.
    fn read_more(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        match self.s.read(&mut buf) {
            Ok(0) => false,
            Ok(n) => {
                self.got.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.got).into_owned()
    }
}

/// The http-mode function: `GET /events?n=N&gap=S[&quiet=S]` streams N server-sent events
/// (chunked) S seconds apart (after the first, a pause of `quiet` seconds), each `data:`
/// ending in `time.time()`; `POST /echo` answers each chunk of a chunked body with
/// `got:CHUNK` as it arrives; `POST /count` reads the body and answers its size;
/// `ANY /sleep?s=S` appends its X-Call-Id to `$CALLS` (`start ID`), sleeps S seconds,
/// appends `done ID` and answers `slept`.
pub const STREAM_PY: &str = r#"
import http.server, os, sys, time, urllib.parse
CALLS = os.environ["CALLS"]

def record(what):
    with open(CALLS, "a") as f:
        f.write(what + "\n")

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def query(self):
        q = urllib.parse.urlparse(self.path).query
        return {k: v[0] for k, v in urllib.parse.parse_qs(q).items()}

    def start_chunked(self, ctype):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def read_chunks(self):
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                self.rfile.readline()
                return
            data = self.rfile.read(size)
            self.rfile.readline()
            yield data

    def events(self):
        q = self.query()
        n, gap, quiet = int(q.get("n", 5)), float(q.get("gap", 0.3)), float(q.get("quiet", 0))
        self.start_chunked("text/event-stream")
        for i in range(n):
            if i == 1 and quiet:
                time.sleep(quiet)
            elif i:
                time.sleep(gap)
            self.chunk(("id: %d\ndata: event %d %.6f\n\n" % (i, i, time.time())).encode())
        self.chunk(b"")

    def echo(self):
        self.start_chunked("text/plain")
        for data in self.read_chunks():
            self.chunk(b"got:" + data + b"\n")
        self.chunk(b"")

    def count(self):
        n = 0
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            for data in self.read_chunks():
                n += len(data)
        else:
            n = len(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.answer(b"%d" % n)

    def sleep(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        call = self.headers.get("X-Call-Id", "")
        record("start " + call)
        time.sleep(float(self.query().get("s", 1)))
        record("done " + call)
        self.answer(b"slept")

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route(self):
        path = urllib.parse.urlparse(self.path).path
        {"/events": self.events, "/echo": self.echo, "/count": self.count,
         "/sleep": self.sleep}.get(path, lambda: self.answer(b"ok"))()

    do_GET = do_POST = route

    def log_message(self, *a):
        pass

PORT = int(os.environ["upstream_url"].rsplit(":", 1)[1].split("/")[0])
http.server.ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
"#;

/// The lines `DIR/NAME.calls` holds now.
pub fn recorded(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}
