//! What the async tests need besides the platform: a nats-server with JetStream (the
//! testkit's), a callback receiver that records requests (and can be taken down and brought
//! back on its port), an HTTP-mode Python function that fails its first N calls with a chosen
//! status, and the backend switch.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virga_testkit::brokers::NatsServer;
use virga_testkit::{free_port, Platform, PASSWORD};

/// Which queue backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Nats,
}

/// A platform on one backend, with its temp dir and (for NATS) its server.
pub struct Setup {
    pub p: Platform,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    _nats: Option<NatsServer>,
}

/// Lets callbacks reach the tests' receivers, which listen on 127.0.0.1.
pub const ALLOW_RECEIVERS: [&str; 2] = ["--callback-allow-cidr", "127.0.0.1/32"];

impl Setup {
    pub fn start(backend: Backend) -> Setup {
        Setup::start_with(backend, &[])
    }

    /// Start with extra `virga up` arguments; callbacks may reach 127.0.0.1.
    pub fn start_with(backend: Backend, extra: &[&str]) -> Setup {
        let mut args = ALLOW_RECEIVERS.to_vec();
        args.extend_from_slice(extra);
        Setup::start_bare(backend, &args, &[])
    }

    /// Start with exactly these extra `virga up` arguments and environment variables.
    pub fn start_bare(backend: Backend, extra: &[&str], envs: &[(&str, &str)]) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let nats = (backend == Backend::Nats).then(NatsServer::start);
        let mut args = Vec::new();
        if let Some(n) = &nats {
            args = vec!["--queue", n.url.as_str()];
        }
        args.extend_from_slice(extra);
        let p = Platform::start_with_env(&dir.join("data"), &args, envs);
        Setup {
            p,
            dir,
            _tmp: tmp,
            _nats: nats,
        }
    }

    /// POST `body` to `/async-function/{name}` with `headers`.
    pub fn call_async(
        &self,
        name: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> reqwest::blocking::Response {
        let mut rb = self
            .p
            .anon(reqwest::Method::POST, &format!("/async-function/{name}"))
            .body(body.to_string());
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        rb.send().unwrap()
    }

    /// `GET /system/virga/queues`.
    pub fn queues(&self) -> serde_json::Value {
        self.p
            .sys(reqwest::Method::GET, "/system/virga/queues")
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// `GET /system/virga/dead-letters`.
    pub fn dead_letters(&self) -> Vec<serde_json::Value> {
        self.p
            .sys(reqwest::Method::GET, "/system/virga/dead-letters")
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// Run the `virga` CLI against this platform.
    pub fn virga(&self, args: &[&str]) -> std::process::Output {
        Command::new(virga_testkit::virga_bin())
            .args(args)
            .env("VIRGA_URL", &self.p.url)
            .env("VIRGA_PASSWORD", PASSWORD)
            .env("VIRGA_CONFIG_DIR", self.dir.join(".config"))
            .env_remove("OPENFAAS_URL")
            .stdin(Stdio::null())
            .output()
            .expect("run virga")
    }

    /// Deploy an HTTP-mode Python function answering `echo:BODY`; its first `fails` calls
    /// answer `fail_status`. Every call appends its X-Call-Id to `DIR/NAME.calls`.
    pub fn deploy_flaky(
        &self,
        name: &str,
        fails: u32,
        fail_status: u16,
        annotations: serde_json::Value,
    ) -> PathBuf {
        let calls = self.dir.join(format!("{name}.calls"));
        let server = self.dir.join(format!("{name}.py"));
        std::fs::write(&server, FLAKY_PY).unwrap();
        // The provider gives each instance its own upstream port in `upstream_url`.
        let port = free_port();
        self.p.deploy_process(
            name,
            &format!("python3 {}", server.display()),
            serde_json::json!({
                "envVars": {
                    "mode": "http",
                    "upstream_url": format!("http://127.0.0.1:{port}"),
                    "FLAKY_CALLS": calls.display().to_string(),
                    "FLAKY_FAILS": fails.to_string(),
                    "FLAKY_STATUS": fail_status.to_string(),
                },
                "annotations": annotations,
            }),
        );
        calls
    }
}

const FLAKY_PY: &str = r#"
import http.server, os
CALLS = os.environ["FLAKY_CALLS"]
FAILS = int(os.environ["FLAKY_FAILS"])
STATUS = int(os.environ["FLAKY_STATUS"])
class H(http.server.BaseHTTPRequestHandler):
    def handle_one(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with open(CALLS, "a") as f:
            f.write(self.headers.get("X-Call-Id", "") + "\n")
        with open(CALLS) as f:
            n = sum(1 for _ in f)
        status = STATUS if n <= FAILS else 200
        reply = (b"echo:" + body) if status == 200 else b"not yet"
        self.send_response(status)
        self.send_header("Content-Type", "text/x-flaky")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    do_POST = handle_one
    def log_message(self, *a):
        pass
PORT = int(os.environ["upstream_url"].rsplit(":", 1)[1].split("/")[0])
http.server.ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
"#;

/// One request the callback receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: String,
    pub at: Instant,
}

/// What a receiver answers by default.
pub const OK: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// A tiny HTTP server recording every request; it can be stopped (its port then refuses
/// connections) and resumed on the same port.
pub struct Receiver {
    pub url: String,
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Received>>>,
    answer: &'static str,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        Receiver::answering(OK)
    }

    /// A receiver answering every request with the raw HTTP response `answer`.
    pub fn answering(answer: &'static str) -> Receiver {
        // Not bind(0): a receiver that stops and resumes binds its port again, and a port of
        // the kernel's ephemeral range may be taken by then.
        let listener = TcpListener::bind(("127.0.0.1", free_port())).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut r = Receiver {
            url: format!("http://{addr}/cb"),
            addr,
            got: Arc::new(Mutex::new(Vec::new())),
            answer,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        r.listen(listener);
        r
    }

    fn listen(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        self.stop.store(false, Ordering::SeqCst);
        let (got, stop, answer) = (self.got.clone(), self.stop.clone(), self.answer);
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        let got = got.clone();
                        std::thread::spawn(move || serve_one(stream, &got, answer));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    /// Close the port: callbacks now fail to connect.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }

    /// Listen on the same port again.
    pub fn resume(&mut self) {
        self.listen(TcpListener::bind(self.addr).unwrap());
    }

    pub fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Distinct `X-Call-Id`s received and how many requests came in all.
    pub fn call_ids(&self) -> (HashSet<String>, usize) {
        let got = self.got.lock().unwrap();
        let ids = got
            .iter()
            .filter_map(|r| r.headers.get("x-call-id").cloned())
            .collect();
        (ids, got.len())
    }

    /// Wait for `n` requests (up to `limit`).
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.requests();
            if r.len() >= n || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Read one request from `stream`, record it and answer `answer`.
pub fn serve_one(stream: impl Read + Write, got: &Mutex<Vec<Received>>, answer: &str) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    got.lock().unwrap().push(Received {
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    });
    let s = reader.get_mut();
    let _ = s.write_all(answer.as_bytes());
    let _ = s.flush();
}

/// Lines of a file (empty if missing).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}
