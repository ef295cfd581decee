//! What the trigger tests share: a platform in a temporary directory and a recording
//! HTTP-mode function (each call appends `body|X-Topic|X-Connector|X-Message-Id|ce-type|
//! X-Scheduled-Time|trace` to a file and answers `done:BODY`, or always `FAIL_STATUS` if set).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use virga_testkit::{free_port, Platform};

/// A platform with its temporary directory.
pub struct Setup {
    pub p: Platform,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Setup {
    pub fn start(args: &[&str]) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let p = Platform::start_env(&dir.join("data"), args, &[], Some(&dir.join("stderr")));
        Setup { p, dir, _tmp: tmp }
    }

    /// Deploy the recorder as `name` with `annotations`; the file its calls go to.
    pub fn deploy_recorder(&self, name: &str, annotations: serde_json::Value) -> PathBuf {
        let calls = self.dir.join(format!("{name}.calls"));
        self.deploy_with(name, annotations, None, &calls);
        calls
    }

    /// The recorder recording into `calls`, answering `fail` to every call when given.
    pub fn deploy_with(
        &self,
        name: &str,
        annotations: serde_json::Value,
        fail: Option<u16>,
        calls: &Path,
    ) {
        let server = self.dir.join("recorder.py");
        std::fs::write(&server, RECORDER_PY).unwrap();
        let port = free_port();
        self.p.deploy_process(
            name,
            &format!("python3 {}", server.display()),
            serde_json::json!({
                "envVars": {
                    "mode": "http",
                    "upstream_url": format!("http://127.0.0.1:{port}"),
                    "RECORD": calls.display().to_string(),
                    "FAIL_STATUS": fail.map(|s| s.to_string()).unwrap_or_default(),
                },
                "annotations": annotations,
            }),
        );
    }

    /// The platform's stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// `GET /system/virga/triggers`.
    pub fn triggers(&self) -> Vec<serde_json::Value> {
        serde_json::from_value(self.p.get_json("/system/virga/triggers")).unwrap()
    }

    /// Remove `name`; asserts 200.
    pub fn remove(&self, name: &str) {
        let r = self.p.send_json(
            reqwest::Method::DELETE,
            "/system/functions",
            serde_json::json!({"functionName": name}),
        );
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

const RECORDER_PY: &str = r#"
import http.server, os
RECORD = os.environ["RECORD"]
FAIL = os.environ.get("FAIL_STATUS") or ""
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        h = lambda k: self.headers.get(k, "")
        line = "|".join([body.decode(), h("X-Topic"), h("X-Connector"), h("X-Message-Id"),
                         h("ce-type"), h("X-Scheduled-Time"), h("trace")])
        with open(RECORD, "a") as f:
            f.write(line + "\n")
        status = int(FAIL) if FAIL else 200
        reply = b"done:" + body
        self.send_response(status)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    def log_message(self, *a):
        pass
PORT = int(os.environ["upstream_url"].rsplit(":", 1)[1].split("/")[0])
http.server.ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
"#;

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub body: String,
    pub topic: String,
    pub connector: String,
    pub message_id: String,
    pub ce_type: String,
    pub scheduled: String,
    /// The `trace` header (an MQTT 5 user property in the tests).
    pub trace: String,
}

/// The calls recorded in `path` so far (whole lines only: one may be being written).
pub fn records(path: &Path) -> Vec<Rec> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            Rec {
                body: f[0].into(),
                topic: f[1].into(),
                connector: f[2].into(),
                message_id: f[3].into(),
                ce_type: f[4].into(),
                scheduled: f[5].into(),
                trace: f[6].into(),
            }
        })
        .collect()
}

/// Wait until `path` holds at least `n` calls (up to `limit`); the calls then.
pub fn wait_records(path: &Path, n: usize, limit: Duration) -> Vec<Rec> {
    let deadline = Instant::now() + limit;
    loop {
        let r = records(path);
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of the `/metrics` series `name{labels}` (labels as printed), if present.
pub fn metric(p: &Platform, series: &str) -> Option<f64> {
    p.metric(&format!("{series} "))
}

fn probes(calls: &Path) -> usize {
    records(calls)
        .iter()
        .filter(|r| r.body.starts_with("probe-"))
        .count()
}

/// Publish probes (`probe-N`) with `publish` until a new one is recorded in `calls`: the
/// subscription is live from then on. Probe calls are told apart by their body.
pub fn wait_subscribed(calls: &Path, mut publish: impl FnMut(&str)) {
    let before = probes(calls);
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in 0.. {
        assert!(
            Instant::now() < deadline,
            "the subscription never became live"
        );
        publish(&format!("probe-{n}"));
        let until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < until {
            if probes(calls) > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Wait until `path` holds at least `n` calls that are not probes (up to `limit`); those.
pub fn wait_real(path: &Path, n: usize, limit: Duration) -> Vec<Rec> {
    let deadline = Instant::now() + limit;
    loop {
        let r = real(&records(path));
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The recorded calls that are not probes.
pub fn real(recs: &[Rec]) -> Vec<Rec> {
    recs.iter()
        .filter(|r| !r.body.starts_with("probe-"))
        .cloned()
        .collect()
}

/// The broker goes away (`down(true)`) and comes back (`down(false)`): the connector's
/// `connected` metric falls to 0 within `lost`, HTTP keeps serving, and the metric is back
/// at 1 within 20 s of the restart.
pub fn outage(s: &Setup, connector: &str, lost: Duration, mut down: impl FnMut(bool)) {
    down(true);
    let up = format!("virga_connector_connected{{connector=\"{connector}\"}}");
    assert!(s.p.eventually(lost, || metric(&s.p, &up) == Some(0.0)));
    let health = s.p.anon(reqwest::Method::GET, "/healthz").send().unwrap();
    assert_eq!(health.status(), 200);
    down(false);
    assert!(s
        .p
        .eventually(Duration::from_secs(20), || metric(&s.p, &up) == Some(1.0)));
}
