//! Headless Chromium driven over the DevTools protocol (a minimal client over one WebSocket,
//! so no generated protocol crate has to compile), for the console's tests.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

const CHROMIUM: &str = "/usr/bin/chromium";

/// A headless Chromium with one page, driven over the DevTools protocol.
pub struct Browser {
    child: Child,
    ws: WebSocket<TcpStream>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Start Chromium with a fresh profile and attach to its page.
    pub fn launch() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: run scripts/setup (installs the `chromium` package)"
        );
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1280,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromium");
        // Chromium writes its DevTools port into the profile once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
            {
                break p;
            }
            assert!(Instant::now() < deadline, "chromium did not start in 60 s");
            std::thread::sleep(Duration::from_millis(50));
        };
        let targets: Vec<Value> =
            reqwest::blocking::get(format!("http://127.0.0.1:{port}/json/list"))
                .and_then(|r| r.json())
                .expect("list chromium's targets");
        let ws_url = targets
            .iter()
            .find(|t| t["type"] == "page")
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .expect("chromium has a page")
            .to_string();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (ws, _) = tungstenite::client(ws_url.as_str(), stream).expect("DevTools WebSocket");
        let mut b = Browser {
            child,
            ws,
            next_id: 0,
            _profile: profile,
        };
        b.call("Page.enable", json!({}));
        b.call("Runtime.enable", json!({}));
        b.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        b
    }

    /// Send one DevTools command and return its result (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).expect("send to chromium");
        loop {
            let m = self.ws.read().expect("read from chromium");
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] != id {
                continue;
            }
            if let Some(e) = v.get("error") {
                panic!("{method} failed: {e}");
            }
            return v["result"].clone();
        }
    }

    /// Evaluate `js` in the page (promises awaited) and return its value.
    pub fn eval(&mut self, js: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("page script failed: {e}\n{js}");
        }
        r["result"]["value"].clone()
    }

    /// Poll `js` until it is truthy; panic with `what` and the page's text after `limit`.
    pub fn wait_for(&mut self, what: &str, js: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.eval(js);
            let truthy = match &v {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText");
                panic!("timed out waiting for {what}; the page shows:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Click the element `selector` with the mouse, once it is visible, still and on top.
    pub fn click(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let js = format!(
            r#"(() => {{
                const e = document.querySelector({sel});
                if (!e) return null;
                e.scrollIntoView({{block: 'center', behavior: 'instant'}});
                const r = e.getBoundingClientRect();
                if (r.width === 0 || r.height === 0) return null;
                const x = r.x + r.width / 2, y = r.y + r.height / 2;
                const top = document.elementFromPoint(x, y);
                if (!top || !(top === e || e.contains(top))) return null;
                const key = [x, y].join(',');
                if (window.__lastClickPos !== key) {{ window.__lastClickPos = key; return null; }}
                return [x, y];
            }})()"#
        );
        self.eval("window.__lastClickPos = null");
        let at = self.wait_for(
            &format!("{selector} to be clickable"),
            &js,
            Duration::from_secs(20),
        );
        let (x, y) = (at[0].as_f64().unwrap(), at[1].as_f64().unwrap());
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            );
        }
    }

    /// Replace the text of the input `selector` by typing `text`.
    pub fn type_into(&mut self, selector: &str, text: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        self.wait_for(
            &format!("{selector} to exist"),
            &format!(
                "(() => {{ const e = document.querySelector({sel}); if (!e) return false; \
                 e.focus(); e.select(); return document.activeElement === e; }})()"
            ),
            Duration::from_secs(20),
        );
        self.call("Input.insertText", json!({"text": text}));
    }

    /// Text content of `selector` ("" if missing).
    pub fn text(&mut self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(document.querySelector({sel}) || {{}}).textContent || ''"
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Value of the form control `selector` ("" if missing).
    pub fn value(&mut self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!(
            "(document.querySelector({sel}) || {{}}).value || ''"
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Save a PNG of the whole page to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let height = self
            .eval("Math.ceil(document.documentElement.scrollHeight)")
            .as_f64()
            .unwrap_or(900.0);
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        );
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium and its helpers share the process group started for it.
        // SAFETY: kill(2) on the process group of our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// `target/test-output/NAME`, next to the binaries under test.
pub fn output_path(name: &str) -> PathBuf {
    let bin = crate::virga_bin();
    let target = bin.parent().and_then(Path::parent).unwrap();
    target.join("test-output").join(name)
}
