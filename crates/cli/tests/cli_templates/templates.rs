//! The embedded templates really serve: `virga new` a function, `virga build` it, unpack
//! the bundle with `tar`, start the runtime on a free port as the watchdog would, and
//! make real requests (`scripts/setup` installs python3 and node).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virga_testkit::free_port;

/// Kills the runtime when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn virga(dir: &Path, args: &[&str]) -> String {
    virga_testkit::cli(dir, &[], args)
}

/// `virga new NAME --lang LANG` + `virga build`, then the bundle unpacked with tar.
fn built_bundle(dir: &Path, name: &str, lang: &str) -> PathBuf {
    built_bundle_with(dir, name, lang, None)
}

/// [`built_bundle`] with the starter handler replaced by `handler` (file name, code).
fn built_bundle_with(dir: &Path, name: &str, lang: &str, handler: Option<(&str, &str)>) -> PathBuf {
    virga(dir, &["new", name, "--lang", lang]);
    if let Some((file, code)) = handler {
        std::fs::write(dir.join(name).join(file), code).unwrap();
    }
    let out = virga(dir, &["build", "--filter", name]);
    assert!(
        out.contains(&format!("virga.local/{name}@sha256:")),
        "{out}"
    );
    let ext = dir.join(format!("{name}-extracted"));
    std::fs::create_dir_all(&ext).unwrap();
    let archive = dir.join("build").join(format!("{name}.tar.gz"));
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&ext)
        .status()
        .expect("run tar");
    assert!(status.success());
    assert!(ext.join("virga-bundle.json").is_file());
    ext
}

fn start(dir: &Path, program: &str, arg: &str, port: u16) -> Running {
    start_with_env(dir, program, arg, port, &[])
}

/// [`start`] with the extra environment variables `env`.
fn start_with_env(
    dir: &Path,
    program: &str,
    arg: &str,
    port: u16,
    env: &[(&str, &str)],
) -> Running {
    let child = Command::new(program)
        .arg(arg)
        .current_dir(dir)
        .env("upstream_url", format!("http://127.0.0.1:{port}"))
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    let running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{program} {arg} did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    running
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[test]
fn python3_http_template_serves_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let ext = built_bundle(tmp.path(), "hello", "python3-http");
    let port = free_port();
    let _server = start(&ext, "python3", "index.py", port);
    let c = http();
    let base = format!("http://127.0.0.1:{port}");
    let r = c.get(&base).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "Hello from Virga!");

    // A handler exercising the event fields, JSON bodies and errors.
    std::fs::write(
        ext.join("function/handler.py"),
        "def handle(event, context):\n\
         \x20   if event.path == '/boom':\n\
         \x20       raise RuntimeError('kaput')\n\
         \x20   return {'statusCode': 201, 'headers': {'X-Fn': 'yes'},\n\
         \x20           'body': {'method': event.method, 'q': event.query,\n\
         \x20                    'body': event.body.decode(), 'path': event.path}}\n",
    )
    .unwrap();
    drop(_server);
    let port = free_port();
    let _server = start(&ext, "python3", "index.py", port);
    let base = format!("http://127.0.0.1:{port}");
    let r = c
        .post(format!("{base}/p?a=1&a=2&b=x"))
        .body("ping")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-fn"], "yes");
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(
        v,
        serde_json::json!({"method": "POST", "q": {"a": "1", "b": "x"}, "body": "ping", "path": "/p"})
    );
    let r = c.get(format!("{base}/boom")).send().unwrap();
    assert_eq!(r.status(), 500);
    assert!(r.text().unwrap().contains("kaput"));
    // Still serving after the error, on a kept-alive connection.
    assert_eq!(c.get(&base).send().unwrap().status(), 201);
}

/// Writes `request` on a new connection to `port`, closes the sending side, and reads until
/// the runtime closes: everything it answered.
fn raw_exchange(port: u16, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn python3_http_runtime_speaks_http_1_1() {
    let tmp = tempfile::tempdir().unwrap();
    let ext = built_bundle(tmp.path(), "raw", "python3-http");
    std::fs::write(
        ext.join("function/handler.py"),
        "def handle(event, context):\n\
         \x20   return {'body': {'path': event.path, 'body': event.body.decode(),\n\
         \x20                    'x': event.headers.get('x-test'), 'has': 'X-TEST' in event.headers}}\n",
    )
    .unwrap();
    let port = free_port();
    let _server = start(&ext, "python3", "index.py", port);

    // Two pipelined requests on one kept-alive connection; the second asks to close it.
    let out = raw_exchange(
        port,
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-Test: 1\r\n\r\n\
          GET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
    assert!(
        out.contains(r#""path": "/a""#) && out.contains(r#""path": "/b""#),
        "{out}"
    );
    assert!(out.contains(r#""x": "1", "has": true"#), "{out}");
    assert!(out.contains("Connection: close"), "{out}");

    // A chunked body, with a chunk extension and a trailer.
    let out = raw_exchange(
        port,
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    assert!(out.contains(r#""body": "hello world""#), "{out}");

    // Expect: 100-continue gets its interim answer before the body is read.
    let out = raw_exchange(
        port,
        b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\nok",
    );
    assert!(
        out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK"),
        "{out}"
    );

    // HTTP/1.0 without keep-alive is answered once and closed.
    let out = raw_exchange(port, b"GET /old HTTP/1.0\r\n\r\n");
    assert!(
        out.contains("HTTP/1.1 200 OK") && out.contains("Connection: close"),
        "{out}"
    );

    // Garbage gets a 400 saying so, and the runtime keeps serving.
    let out = raw_exchange(port, b"NONSENSE\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400 Bad Request"), "{out}");
    assert!(out.contains("malformed request line"), "{out}");
    let out = raw_exchange(port, b"GET /h HTTP/1.1\r\nNo colon here\r\n\r\n");
    assert!(out.contains("malformed header line"), "{out}");
    let r = http()
        .get(format!("http://127.0.0.1:{port}/after"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn node_template_serves_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let ext = built_bundle(tmp.path(), "greet", "node20");
    let port = free_port();
    let _server = start(&ext, "node", "index.js", port);
    let r = http()
        .post(format!("http://127.0.0.1:{port}/"))
        .header("content-type", "application/json")
        .body(r#"{"name":"virga"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(
        v,
        serde_json::json!({"message": "Hello from Virga!", "input": {"name": "virga"}})
    );
}

/// Run a classic (serializing) bundle's fprocess once with `input` on stdin.
/// A pooled runtime (`VIRGA_POOL=1`) loads a function only for a bind carrying its token,
/// answers it with proof of the token, and leaves the token neither to the function's
/// environment nor for a second bind.
#[test]
fn pooled_runtimes_bind_only_with_their_token() {
    use sha2::Digest;
    let cases = [
        ("python3-http", "python3", "index.py", "handler.py", "import os\n\ndef handle(event, context):\n    return {'body': {'token': os.environ.get('VIRGA_BIND_TOKEN'), 'mode': os.environ.get('FN_MODE')}}\n"),
        ("node20", "node", "index.js", "handler.js", "module.exports = async () => ({ token: process.env.VIRGA_BIND_TOKEN || null, mode: process.env.FN_MODE })\n"),
    ];
    for (lang, program, entry, file, code) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let ext = built_bundle_with(tmp.path(), "fn", lang, Some((file, code)));
        let port = free_port();
        let token = "5e".repeat(32);
        let _rt = start_with_env(
            &ext,
            program,
            entry,
            port,
            &[("VIRGA_POOL", "1"), ("VIRGA_BIND_TOKEN", &token)],
        );
        let bind = |token: Option<&str>| {
            let mut req = http()
                .post(format!("http://127.0.0.1:{port}/_/virga/bind"))
                .json(&serde_json::json!({"dir": ext, "env": {"FN_MODE": "bound"}}));
            if let Some(t) = token {
                req = req.header("X-Virga-Bind-Token", t);
            }
            req.send().unwrap()
        };
        assert_eq!(bind(None).status(), 403, "{lang}");
        assert_eq!(bind(Some(&"00".repeat(32))).status(), 403, "{lang}");
        assert_eq!(bind(Some("short")).status(), 403, "{lang}");
        let r = bind(Some(&token));
        assert_eq!(r.status(), 200, "{lang}");
        let proof = hex::encode(sha2::Sha256::digest(format!("virga-bound:{token}")));
        assert_eq!(
            r.headers()["x-virga-bound"].to_str().unwrap(),
            proof,
            "{lang}"
        );
        // Bound: every request, a repeated bind too, is the function's, which sees its own
        // environment and not the token.
        let again: serde_json::Value = bind(Some(&token)).json().unwrap();
        assert_eq!(
            again,
            serde_json::json!({"token": null, "mode": "bound"}),
            "{lang}"
        );
    }
}

fn run_classic(ext: &Path, input: &str) -> String {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ext.join("virga-bundle.json")).unwrap()).unwrap();
    assert_eq!(manifest["env"]["mode"], "serializing");
    let fprocess = manifest["env"]["fprocess"].as_str().unwrap().to_string();
    let mut parts = fprocess.split_whitespace();
    let mut child = Command::new(parts.next().unwrap())
        .args(parts)
        .current_dir(ext)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn classic_templates_read_stdin_and_write_stdout() {
    let tmp = tempfile::tempdir().unwrap();
    let ext = built_bundle(tmp.path(), "shout", "bash");
    assert_eq!(run_classic(&ext, "hello"), "HELLO");
    let ext = built_bundle(tmp.path(), "echo", "python3");
    assert_eq!(run_classic(&ext, "hi there"), "hi there\n");
}
