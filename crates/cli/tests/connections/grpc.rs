//! HTTP/2, gRPC and TLS through the real `virga up`: a Python gRPC server (grpcio, generic
//! handlers over bytes) as an http-mode function, called by a Python gRPC client through the
//! gateway: unary, server-streaming, client-streaming and bidirectional calls (lock-step, so
//! buffering would stall them), a server error's status and message, trailing metadata, the
//! deadline, calls by path and by `x-virga-function` metadata, `--max-body-bytes` per
//! message, under process isolation and runc; h2c with prior knowledge and HTTP/1.1 on the
//! same port (curl), the idle timeout and the reserve over HTTP/2 (hyper's client); HTTPS with
//! HTTP/2 over TLS and HTTP/1.1 with a test CA; bad certificate files stop the start.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use virga_testkit::certs::TestCa;
use virga_testkit::{free_port, virga_bin, Platform, PASSWORD};

const SERVER: &str = include_str!("grpc/server.py");
const CLIENT: &str = include_str!("grpc/client.py");
/// The system's Python: `scripts/setup --test` installs grpcio for it, where sandboxes (which
/// see the host's /usr) find it too.
const PYTHON: &str = "/usr/bin/python3";

/// A plain HTTP/1.1 http-mode function: answers the HTTP version it was called with, its path,
/// its body and the host the client asked for.
const WEB: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        host = self.headers.get("X-Forwarded-Host")
        reply = ("%s %s %s %s" % (self.request_version, self.path, body.decode(), host)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
    do_GET = do_POST = answer
    def log_message(self, *a):
        pass
PORT = int(os.environ["upstream_url"].rsplit(":", 1)[1].split("/")[0])
http.server.ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
"#;

/// A WebSocket echo server (the `websockets` package) on the port of `upstream_url`.
const WS_ECHO: &str = r#"
import asyncio, os
from websockets.asyncio.server import serve
PORT = int(os.environ["upstream_url"].rsplit(":", 1)[1].split("/")[0])
async def echo(ws):
    async for m in ws:
        await ws.send(m)
async def main():
    async with serve(echo, "127.0.0.1", PORT) as s:
        await s.serve_forever()
asyncio.run(main())
"#;

/// Dials `wss://` URL argv 1 trusting CA file argv 2; prints the echo of one message.
const WS_CLIENT: &str = r#"
import asyncio, ssl, sys
from websockets.asyncio.client import connect
async def main():
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    async with connect(sys.argv[1], ssl=ctx, open_timeout=30) as ws:
        await ws.send("over tls")
        print(await ws.recv())
asyncio.run(main())
"#;

/// The http-mode settings of a function listening on a free port.
fn http_mode() -> Value {
    json!({"mode": "http", "upstream_url": format!("http://127.0.0.1:{}", free_port())})
}

/// Deploy `code` as the http-mode function `name`, run from a file in `dir` (process isolation).
fn deploy_py(p: &Platform, dir: &Path, name: &str, code: &str) {
    let file = dir.join(format!("{name}.py"));
    std::fs::write(&file, code).unwrap();
    p.deploy_process(
        name,
        &format!("{PYTHON} {}", file.display()),
        json!({"envVars": http_mode()}),
    );
}

/// `host:port` of a platform URL.
fn authority(url: &str) -> &str {
    url.split_once("://").map_or(url, |(_, rest)| rest)
}

/// Run the gRPC client against `target` with `env`; what it saw.
fn grpc_client(dir: &Path, target: &str, env: &[(&str, &str)]) -> Value {
    let script = dir.join("grpc_client.py");
    std::fs::write(&script, CLIENT).unwrap();
    let out = Command::new(PYTHON)
        .arg(&script)
        .env("TARGET", target)
        .envs(env.iter().copied())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "gRPC client failed (grpcio missing? run scripts/setup --test):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Check what the client saw of the checks it ran.
fn assert_calls(out: &Value) {
    if !out["unary"].is_null() {
        assert_eq!(out["unary"], "echo:hi");
        assert_eq!(out["trailer"], "kept", "trailing metadata arrives");
    }
    if !out["server_stream"].is_null() {
        assert_eq!(out["server_stream"], json!(["m0", "m1", "m2", "m3", "m4"]));
        // The function sends one every 0.2 s: they arrive as sent, not all at the end.
        let at: Vec<f64> = out["arrivals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(at[4] - at[0] > 0.5, "streamed, not buffered: {at:?}");
    }
    if !out["client_stream"].is_null() {
        assert_eq!(out["client_stream"], "4:c0+c1+c2+c3");
    }
    if !out["bidi"].is_null() {
        assert_eq!(
            out["bidi"],
            json!(["PING0", "PING1", "PING2", "PING3", "PING4"])
        );
    }
    if !out["fail"].is_null() {
        assert_eq!(
            out["fail"],
            json!(["INVALID_ARGUMENT", "bad input: ünïcode 100%"]),
            "the server's status and message arrive intact"
        );
    }
    if !out["remaining"].is_null() {
        let left = out["remaining"].as_f64().unwrap();
        assert!(left > 3.0 && left < 5.5, "grpc-timeout passes: {left}");
    }
}

#[test]
fn grpc_calls_of_every_kind_reach_an_h2c_function_by_path_and_by_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    deploy_py(&p, dir.path(), "grpc-echo", SERVER);
    let target = authority(&p.url);

    let out = grpc_client(dir.path(), target, &[("PREFIX", "/function/grpc-echo")]);
    assert_calls(&out);
    assert_eq!(out["server_stream"].as_array().unwrap().len(), 5);
    assert_eq!(out["bidi"].as_array().unwrap().len(), 5);
    // The gateway's own refusals arrive as gRPC statuses with their messages.
    assert_eq!(out["missing"][0], "UNIMPLEMENTED", "{out}");
    let msg = out["missing"][1].as_str().unwrap();
    assert!(msg.contains("\"no-such-fn\" not found"), "{msg}");
    assert_eq!(out["unnamed"][0], "UNIMPLEMENTED", "{out}");
    assert!(
        out["unnamed"][1]
            .as_str()
            .unwrap()
            .contains("x-virga-function"),
        "{out}"
    );

    // Stubs that cannot change their paths name the function in metadata.
    let named = grpc_client(
        dir.path(),
        target,
        &[
            ("PREFIX", ""),
            ("METADATA", r#"[["x-virga-function", "grpc-echo"]]"#),
            ("CHECKS", "unary,client,bidi,fail"),
        ],
    );
    assert_calls(&named);
    assert_eq!(named["unary"], "echo:hi");
}

#[test]
fn refusals_become_grpc_statuses_with_their_messages() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_with(
        dir.path(),
        &["--max-body-bytes", "100000", "--body-read-timeout", "1"],
    );
    deploy_py(&p, dir.path(), "grpc-echo", SERVER);
    let file = dir.path().join("slow.py");
    std::fs::write(&file, SERVER).unwrap();
    let mut env = http_mode();
    env["exec_timeout"] = json!("1s");
    p.deploy_process(
        "grpc-slow",
        &format!("{PYTHON} {}", file.display()),
        json!({"envVars": env}),
    );
    // The watchdog's 504 for exec_timeout.
    let out = grpc_client(
        dir.path(),
        authority(&p.url),
        &[("PREFIX", "/function/grpc-slow"), ("CHECKS", "slow")],
    );
    assert_eq!(out["slow"][0], "DEADLINE_EXCEEDED", "{out}");
    assert!(
        out["slow"][1]
            .as_str()
            .unwrap()
            .contains("exec_timeout of 1s"),
        "{out}"
    );
    // `--max-body-bytes` bounds each message of a stream, not the stream.
    let out = grpc_client(
        dir.path(),
        authority(&p.url),
        &[
            ("PREFIX", "/function/grpc-echo"),
            ("CHECKS", "limits,pause"),
        ],
    );
    assert_eq!(out["many_small"], "30:300000", "{out}");
    // A client stream may pause beyond --body-read-timeout.
    assert_eq!(out["paused"], json!(["A", "B"]), "{out}");
    assert_eq!(out["one_big"][0], "RESOURCE_EXHAUSTED", "{out}");
    let msg = out["one_big"][1].as_str().unwrap();
    assert!(
        msg.contains("larger than the limit of 100000 bytes"),
        "{msg}"
    );
}

#[test]
fn a_stream_outlives_the_idle_timeout_while_other_calls_come_and_go() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_with(dir.path(), &["--idle-timeout", "1"]);
    deploy_py(&p, dir.path(), "grpc-echo", SERVER);
    // 12 messages 0.2 s apart: the connection is busy for 2.4 s, though the unary calls
    // beside the stream end long before.
    let out = grpc_client(
        dir.path(),
        authority(&p.url),
        &[
            ("PREFIX", "/function/grpc-echo"),
            ("CHECKS", "server,during"),
            ("STREAM_LEN", "12"),
        ],
    );
    assert_eq!(out["server_stream"].as_array().unwrap().len(), 12, "{out}");
}

/// `curl ARGS`: the body and the HTTP version curl used.
fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_version}"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, version) = text.rsplit_once('\n').unwrap();
    (body.to_string(), version.to_string())
}

#[test]
fn http2_with_prior_knowledge_and_http1_share_the_port_and_plain_functions_stay_on_http1() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    deploy_py(&p, dir.path(), "web", WEB);
    let url = format!("{}/function/web/a?b=1", p.url);
    let expected = format!("HTTP/1.1 /a?b=1 hello {}", authority(&p.url));
    let h2 = ["--http2-prior-knowledge"];
    let (body, version) = curl(&[&h2[..], &["--data-binary", "hello", &url]].concat());
    assert_eq!(version, "2");
    // The function, a plain HTTP/1.1 server, is called over HTTP/1.1 all the same, and learns
    // the host (HTTP/2's :authority) as over HTTP/1.1.
    assert_eq!(body, expected);
    let (body, version) = curl(&["--http1.1", "--data-binary", "hello", &url]);
    assert_eq!((body, version.as_str()), (expected, "1.1"));
    // A classic function's watchdog takes the call over h2c from the gateway.
    p.deploy_script("cat", "cat", json!({}));
    let cat = format!("{}/function/cat", p.url);
    let (body, version) = curl(&[&h2[..], &["--data-binary", "meow", &cat]].concat());
    assert_eq!((body.as_str(), version.as_str()), ("meow", "2"));
    let (body, version) = curl(&[&h2[..], &[&format!("{}/healthz", p.url)]].concat());
    assert_eq!((body.as_str(), version.as_str()), ("OK", "2"));
    // The API routes over HTTP/2 too, with their auth.
    let system = format!("{}/system/functions", p.url);
    let (body, _) = curl(&[&h2[..], &["-u", &format!("admin:{PASSWORD}"), &system]].concat());
    assert!(body.contains("\"web\""), "{body}");
    let console = p.console_url.clone().unwrap();
    let (_, version) = curl(&[&h2[..], &[&format!("{console}/healthz")]].concat());
    assert_eq!(version, "2", "the console's listener speaks HTTP/2 too");
}

/// Send one h2c request for `path` to `addr` on a fresh connection; its status, and whether
/// the server closed the connection within `wait` after answering.
fn h2_once(addr: &str, path: &str, wait: Duration) -> (u16, bool) {
    use http_body_util::{BodyExt, Empty};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(tcp);
        let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            io,
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(format!("http://{addr}{path}"))
            .body(Empty::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        resp.into_body().collect().await.unwrap();
        let closed = tokio::time::timeout(wait, conn).await.is_ok();
        (status, closed)
    })
}

#[test]
fn a_reserve_connection_serves_one_http2_request_then_closes() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_with(
        dir.path(),
        &["--max-connections", "1", "--reserved-connections", "4"],
    );
    let addr = authority(&p.url);
    let wait = Duration::from_secs(2);
    assert_eq!(
        h2_once(addr, "/healthz", wait),
        (200, false),
        "a public one stays"
    );
    // A silent connection holds the only public slot: the next ones get the reserve.
    let hold = std::net::TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        h2_once(addr, "/healthz", wait),
        (200, true),
        "GOAWAY after one request"
    );
    assert_eq!(h2_once(addr, "/function/anything", wait), (503, true));
    drop(hold);
}

#[test]
fn https_serves_grpc_over_http2_and_https_1_1_with_a_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "gw");
    let server = ca.server();
    let mut p = Platform::start_with(
        dir.path(),
        &[
            "--tls-cert",
            server.cert.to_str().unwrap(),
            "--tls-key",
            server.key.to_str().unwrap(),
        ],
    );
    assert!(p.url.starts_with("https://"), "{}", p.url);
    let ca_pem = std::fs::read(&ca.ca).unwrap();
    p.http = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    deploy_py(&p, dir.path(), "grpc-echo", SERVER);

    let ca_path = ca.ca.to_str().unwrap();
    let out = grpc_client(
        dir.path(),
        authority(&p.url),
        &[
            ("PREFIX", "/function/grpc-echo"),
            ("CA", ca_path),
            ("CHECKS", "unary,server,client,bidi,fail"),
        ],
    );
    assert_calls(&out);
    assert_eq!(out["bidi"].as_array().unwrap().len(), 5);

    let health = format!("{}/healthz", p.url);
    let tls = ["--cacert", ca_path];
    let (body, version) = curl(&[&tls[..], &["--http2", &health]].concat());
    assert_eq!((body.as_str(), version.as_str()), ("OK", "2"), "ALPN h2");
    let (body, version) = curl(&[&tls[..], &["--http1.1", &health]].concat());
    assert_eq!((body.as_str(), version.as_str()), ("OK", "1.1"));
    let console = p.console_url.clone().unwrap();
    assert!(console.starts_with("https://"), "{console}");
    let (body, _) = curl(&[&tls[..], &[&format!("{console}/healthz")]].concat());
    assert_eq!(body, "OK");
    // The API's /ui/ sends browsers to the console's HTTPS origin.
    let ui = format!("{}/ui/", p.url);
    let (location, _) = curl(
        &[
            &tls[..],
            &[
                "-o",
                "/dev/null",
                "-w",
                "%{redirect_url}\n%{http_version}",
                &ui,
            ],
        ]
        .concat(),
    );
    assert!(
        location.starts_with(&format!("{console}/ui/")),
        "{location}"
    );
    // Without the CA the certificate is refused; plain HTTP gets no answer.
    let refused = Command::new("curl")
        .args(["-sS", "--max-time", "10", &health])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let plain = health.replacen("https://", "http://", 1);
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "10", &plain])
        .output()
        .unwrap();
    assert!(!plain.status.success());

    // WebSockets over TLS (wss://): the gateway splices them itself (a TLS client's socket
    // cannot be handed over).
    deploy_py(&p, dir.path(), "wss-echo", WS_ECHO);
    let wss = format!(
        "{}/function/wss-echo",
        p.url.replacen("https://", "wss://", 1)
    );
    let echoed = virga_testkit::stdout_of(
        Command::new("timeout").args(["60", PYTHON, "-c", WS_CLIENT, &wss, ca_path]),
    );
    assert_eq!(echoed.trim(), "over tls");

    // The CLI talks HTTPS, trusting the CA through SSL_CERT_FILE.
    let env = [
        ("VIRGA_URL", p.url.as_str()),
        ("VIRGA_PASSWORD", PASSWORD),
        ("SSL_CERT_FILE", ca_path),
    ];
    let listed = virga_testkit::cli(dir.path(), &env, &["list"]);
    assert!(listed.contains("grpc-echo"), "{listed}");
}

#[test]
fn a_stream_of_a_drained_instance_ends_with_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let file = dir.path().join("server.py");
    std::fs::write(&file, SERVER).unwrap();
    let grace = json!({"virga.connection.drain-grace": "1s"});
    p.deploy_process(
        "grpc-echo",
        &format!("{PYTHON} {}", file.display()),
        json!({"envVars": http_mode(), "annotations": grace}),
    );
    let env = [("PREFIX", "/function/grpc-echo"), ("CHECKS", "drained")];
    let out = std::thread::scope(|s| {
        let client = s.spawn(|| grpc_client(dir.path(), authority(&p.url), &env));
        std::thread::sleep(Duration::from_millis(1500));
        let r = p.send_json(
            reqwest::Method::POST,
            "/system/scale-function/grpc-echo",
            json!({"serviceName": "grpc-echo", "replicas": 0}),
        );
        assert!(r.status < 300, "{}", r.text);
        client.join().unwrap()
    });
    // Cut between two messages with a status clients retry, not a broken stream.
    let drained = &out["drained"];
    assert!(drained[0].as_u64().unwrap() >= 5, "{out}");
    assert_eq!(drained[1], "UNAVAILABLE", "{out}");
    assert!(drained[2].as_str().unwrap().contains("going away"), "{out}");
}

#[test]
fn bad_tls_files_stop_the_start_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "one");
    let other = TestCa::new(dir.path(), "two");
    let (good, stranger) = (ca.server(), other.server());
    let missing = dir.path().join("missing.pem");
    let up = |cert: &Path, key: &Path| {
        let out = Command::new(virga_bin())
            .args(["up", "--listen", "127.0.0.1:0", "--isolation", "process"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env("VIRGA_ADMIN_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(!out.status.success(), "started with {cert:?} and {key:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = up(&missing, &good.key);
    assert!(e.contains("--tls-cert") && e.contains("missing.pem"), "{e}");
    let e = up(&good.cert, &missing);
    assert!(e.contains("--tls-key") && e.contains("missing.pem"), "{e}");
    let e = up(&good.key, &good.key);
    assert!(e.contains("is not a PEM certificate"), "{e}");
    let e = up(&good.cert, &stranger.key);
    assert!(e.contains("does not fit the certificate"), "{e}");
}

#[test]
fn grpc_streams_through_a_runc_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(dir.path(), &[]);
    p.deploy_bundle(
        "grpc-echo",
        &[("server.py", SERVER)],
        "python3 server.py",
        json!({"envVars": http_mode()}),
    );
    let out = grpc_client(
        dir.path(),
        authority(&p.url),
        &[
            ("PREFIX", "/function/grpc-echo"),
            ("CHECKS", "unary,server,client,bidi,fail,deadline"),
        ],
    );
    assert_calls(&out);
    assert_eq!(out["bidi"].as_array().unwrap().len(), 5);
}
