//! WebSockets through the real `virga up`, with the `websockets` package from PyPI as the
//! client and as the function's server (an http-mode function): text, binary and 1 MB
//! frames, ping/pong and close codes cross the gateway unchanged; an open socket is a call in
//! flight (`max_inflight`, metrics, no scale to zero); idle timeout and lifetime close sockets; a scale-down or
//! a redeploy drains them within the grace; a crash mid-connection closes the client's and
//! the next call works; the same under runc.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use virga_testkit::{free_port, Platform, PASSWORD};

/// The function: an echo server that answers `pid`, `headers`, `crash` and
/// `close CODE REASON` itself, notes each socket's open and close in `$WS_EVENTS`, and
/// answers a plain request (no upgrade) with `plain`.
const SERVER: &str = r#"
import asyncio, json, os
from http import HTTPStatus
from websockets.asyncio.server import serve
PORT = int(os.environ["upstream_url"].rsplit(":", 1)[1].split("/")[0])
EVENTS = os.environ.get("WS_EVENTS")
def note(line):
    if EVENTS:
        with open(EVENTS, "a") as f:
            f.write(line + "\n")
def plain(connection, request):
    if "upgrade" not in request.headers.get("Connection", "").lower():
        return connection.respond(HTTPStatus.OK, "plain\n")
async def handler(ws):
    note(f"open {ws.request.path}")
    try:
        async for msg in ws:
            if msg == "pid":
                await ws.send(str(os.getpid()))
            elif msg == "headers":
                await ws.send(json.dumps({k.lower(): v for k, v in ws.request.headers.raw_items()}))
            elif msg == "crash":
                os._exit(3)
            elif isinstance(msg, str) and msg.startswith("close "):
                _, code, reason = msg.split(" ", 2)
                await ws.close(int(code), reason)
            else:
                await ws.send(msg)
    finally:
        note(f"closed {ws.close_code} {ws.close_reason}")
async def main():
    async with serve(handler, "127.0.0.1", PORT, max_size=None, ping_interval=None,
                     process_request=plain) as server:
        await server.serve_forever()
asyncio.run(main())
"#;

/// What every client script starts with: `URL` (the function's ws:// URL, argv 1), `API`
/// (the gateway, argv 2), `out(**fields)` (one JSON line), `dial(path)`, `closed(ws)` (the
/// close code the client saw, `None` for a connection cut without a close frame),
/// `admin(method, path, body)` (a /system call) and `get(path)` (a /system GET's JSON).
const PRELUDE: &str = r#"
import asyncio, base64, json, os, sys, time, urllib.request
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
URL, API, PASSWORD = sys.argv[1], sys.argv[2], sys.argv[3]
AUTH = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
def out(**kw):
    print(json.dumps(kw), flush=True)
def dial(path="", **kw):
    return connect(URL + path, max_size=None, ping_interval=None, open_timeout=30, **kw)
async def closed(ws):
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as e:
        return e.rcvd.code if e.rcvd else None
def admin(method, path, body):
    req = urllib.request.Request(API + path, method=method, data=json.dumps(body).encode(),
                                 headers={"Authorization": AUTH, "Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=30).status
def get(path):
    req = urllib.request.Request(API + path, headers={"Authorization": AUTH})
    return json.load(urllib.request.urlopen(req, timeout=30))
"#;

/// Deploy the echo server as `name` (an http-mode function from a bundle) with `annotations`
/// and extra `env`; it notes its sockets in `events` if given.
fn deploy(p: &Platform, name: &str, annotations: Value, env: Value, events: Option<&Path>) {
    p.deploy_bundle(
        name,
        &[("server.py", SERVER)],
        "python3 server.py",
        definition(annotations, env, events),
    );
}

/// The fields of the echo server's deployment beyond its bundle.
fn definition(annotations: Value, env: Value, events: Option<&Path>) -> Value {
    let mut vars = json!({
        "mode": "http",
        "upstream_url": format!("http://127.0.0.1:{}", free_port()),
    });
    if let Some(e) = events {
        vars["WS_EVENTS"] = json!(e.display().to_string());
    }
    for (k, v) in env.as_object().into_iter().flatten() {
        vars[k] = v.clone();
    }
    json!({"envVars": vars, "annotations": annotations})
}

/// `ws://` for `/function/{name}` on `p`.
fn ws_url(p: &Platform, name: &str) -> String {
    format!("{}/function/{name}", p.url.replacen("http://", "ws://", 1))
}

/// Run client `script` (after [`PRELUDE`]) against function `name`; its JSON lines.
fn client(p: &Platform, name: &str, script: &str) -> Vec<Value> {
    let out = python(p, name, script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn python(p: &Platform, name: &str, script: &str) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["120", "python3", "-c"])
        .arg(format!("{PRELUDE}\n{script}"))
        .args([ws_url(p, name), p.url.clone(), PASSWORD.to_string()]);
    cmd
}

/// A client script that waits for a line on its stdin (`go`) between its outputs.
struct Interactive {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Interactive {
    fn start(p: &Platform, name: &str, script: &str) -> Interactive {
        let mut child = python(p, name, script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Interactive { child, lines }
    }

    /// Its next output line.
    fn line(&mut self) -> String {
        self.lines.next().expect("the client ended").unwrap()
    }

    /// Let it go on; its next line.
    fn go(&mut self) -> String {
        writeln!(self.child.stdin.as_mut().unwrap()).unwrap();
        self.line()
    }

    /// Wait for it to end, successfully.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }
}

/// The series `name{function_name="FN.openfaas-fn"...}` on /metrics (0 when absent).
fn metric(p: &Platform, series: &str) -> f64 {
    p.metric(series).unwrap_or(0.0)
}

fn series(name: &str, function: &str, extra: &str) -> String {
    format!("{name}{{function_name=\"{function}.openfaas-fn\"{extra}}}")
}

/// Text, binary and 1 MB frames, a ping, the headers the function got, the function's close
/// code; then a socket the client closes with its own code.
const FRAMES: &str = r#"
async def main():
    async with dial("/chat?room=1") as ws:
        await ws.send("hello")
        text = await ws.recv()
        await ws.send(b"\x00\xffbin")
        binary = await ws.recv()
        big_text = "é" * (1 << 19)
        await ws.send(big_text)
        same_text = (await ws.recv()) == big_text
        big = os.urandom(1 << 20)
        await ws.send(big)
        same_binary = (await ws.recv()) == big
        pong = await ws.ping(b"are you there")
        latency = await asyncio.wait_for(pong, 10)
        await ws.send("headers")
        headers = json.loads(await ws.recv())
        await ws.send("close 4001 bye now")
        code = await closed(ws)
        out(text=text, binary=binary.hex(), same_text=same_text, same_binary=same_binary,
            latency=latency, code=code, reason=ws.close_reason,
            call_id=ws.response.headers.get("X-Call-Id"),
            protocol_headers=sorted(k for k in headers if k.startswith("sec-websocket")),
            forwarded_host=headers.get("x-forwarded-host"))
    async with dial() as ws:
        await ws.close(4002, "client says bye")
    out(done=True)
asyncio.run(main())
"#;

#[test]
fn frames_pings_and_close_codes_cross_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let events = dir.path().join("events");
    deploy(&p, "ws", json!({}), json!({}), Some(&events));
    let got = client(&p, "ws", FRAMES);
    let r = &got[0];
    assert_eq!(r["text"], "hello");
    assert_eq!(r["binary"], "00ff62696e", "a binary frame stays binary");
    assert_eq!(r["same_text"], true, "1 MB text frame");
    assert_eq!(r["same_binary"], true, "1 MB binary frame");
    assert!(r["latency"].as_f64().unwrap() < 5.0, "{r}");
    assert_eq!(r["code"], 4001, "the function's close code: {r}");
    assert_eq!(r["reason"], "bye now");
    assert_eq!(r["call_id"].as_str().unwrap().len(), 36, "{r}");
    assert_eq!(
        r["protocol_headers"],
        json!([
            "sec-websocket-extensions",
            "sec-websocket-key",
            "sec-websocket-version"
        ])
    );
    assert!(r["forwarded_host"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(got[1]["done"], true);
    let early = client(&p, "ws", EARLY_FRAME);
    assert_eq!(early[0], json!({"status": "101", "echoed": true}));
    // The function saw the path and query, and the client's own close code.
    let seen = || std::fs::read_to_string(&events).unwrap_or_default();
    assert!(
        p.eventually(Duration::from_secs(5), || seen()
            .contains("closed 4002 client says bye")),
        "{}",
        seen()
    );
    assert!(seen().starts_with("open /chat?room=1\n"), "{}", seen());
    // Two calls answered 101, none open any more.
    let open = series("virga_function_connections_open", "ws", "");
    assert!(p.eventually(Duration::from_secs(5), || metric(&p, &open) == 0.0));
    let upgraded = series("gateway_function_invocation_total", "ws", ",code=\"101\"");
    assert_eq!(metric(&p, &upgraded), 3.0);
    let closed = series(
        "virga_function_connections_closed_total",
        "ws",
        ",reason=\"closed\"",
    );
    assert!(p.eventually(Duration::from_secs(5), || metric(&p, &closed) == 3.0));
    // A plain request to the same function is an ordinary call.
    let r = p.anon(reqwest::Method::GET, "/function/ws").send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "plain\n");
}

#[test]
fn private_functions_are_checked_before_the_upgrade_and_bad_annotations_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    deploy(&p, "wsp", json!({"virga.private": "true"}), json!({}), None);
    let got = client(
        &p,
        "wsp",
        r#"
async def main():
    try:
        async with dial():
            out(anonymous="upgraded")
    except InvalidStatus as e:
        out(anonymous=e.response.status_code)
    raw = {"Authorization": AUTH, "X-Virga-Lambda-Invoke": "1", "X-Virga-Handoff": "forged"}
    async with dial(additional_headers=raw) as ws:
        await ws.send("headers")
        headers = json.loads(await ws.recv())
        out(authorization="authorization" in headers, lambda_raw="x-virga-lambda-invoke" in headers,
            handoff="x-virga-handoff" in headers or "x-virga-handoff" in ws.response.headers)
asyncio.run(main())
"#,
    );
    assert_eq!(got[0]["anonymous"], 401);
    assert_eq!(got[1]["authorization"], false, "credentials are taken off");
    assert_eq!(
        got[1]["lambda_raw"], false,
        "only the Lambda API hands raw events"
    );
    assert_eq!(
        got[1]["handoff"], false,
        "the hand-off header is the platform's: neither the function nor the client sees it"
    );

    for key in [
        "virga.connection.idle-timeout",
        "virga.connection.max-lifetime",
        "virga.connection.drain-grace",
    ] {
        let mut body = json!({"service": "bad", "envProcess": "cat"});
        body["annotations"] = json!({key: "soon"});
        let r = p.send_json(reqwest::Method::POST, "/system/functions", body);
        assert_eq!(r.status, 400, "{key}: {}", r.text);
        assert!(r.text.contains(&format!("annotations.{key}")), "{}", r.text);
    }
}

#[test]
fn a_hundred_open_sockets_are_calls_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    deploy(&p, "ws", json!({}), json!({}), None);
    let mut holder = Interactive::start(
        &p,
        "ws",
        r#"
async def one(i, opened, go):
    async with dial(f"/{i}") as ws:
        for n in range(5):
            await ws.send(f"{i}:{n}")
            assert await ws.recv() == f"{i}:{n}"
        opened.append(i)
        await go.wait()
        await ws.send(b"last")
        assert await ws.recv() == b"last"
async def main():
    opened, go = [], asyncio.Event()
    tasks = [asyncio.create_task(one(i, opened, go)) for i in range(100)]
    while len(opened) < 100:
        await asyncio.sleep(0.05)
    out(open=len(opened))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    go.set()
    await asyncio.gather(*tasks)
    out(done=True)
asyncio.run(main())
"#,
    );
    assert_eq!(
        holder.line(),
        r#"{"open": 100}"#,
        "the client opened its sockets"
    );
    let open = series("virga_function_connections_open", "ws", "");
    assert_eq!(metric(&p, &open), 100.0);
    // Each is a call in progress, on the function's instance, until it closes.
    let calls = p.get_json("/system/virga/calls");
    let sockets: Vec<&Value> = calls
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["function"] == "ws" && c["kind"] == "upgrade")
        .collect();
    assert_eq!(sockets.len(), 100, "{calls}");
    assert!(sockets
        .iter()
        .all(|c| c["instance"].as_str().unwrap().starts_with("ws-")));
    // The gateway handed each client socket to the instance's watchdog: one proxy splices
    // the frames, not two.
    assert_eq!(client_sockets_held_by(&p, "virga-watchdog"), 100);
    assert_eq!(holder.go(), r#"{"done": true}"#);
    holder.finish();
    assert!(p.eventually(Duration::from_secs(5), || metric(&p, &open) == 0.0));
    assert!(p.eventually(Duration::from_secs(5), || p
        .get_json("/system/virga/calls")
        .as_array()
        .is_some_and(|c| c.is_empty())));

    // With max_inflight 1, an open socket is the instance's one call: a second waits and
    // gets 429, until the first closes.
    deploy(&p, "one", json!({}), json!({"max_inflight": "1"}), None);
    let got = client(
        &p,
        "one",
        r#"
async def main():
    async with dial() as first:
        await first.send("pid")
        await first.recv()
        try:
            async with dial():
                out(second="upgraded")
        except InvalidStatus as e:
            out(second=e.response.status_code, why=e.response.body.decode())
    async with dial() as third:
        await third.send("ok")
        out(third=await third.recv())
asyncio.run(main())
"#,
    );
    assert_eq!(got[0]["second"], 429);
    // Refused by the platform (the lease is taken), not by the instance's watchdog.
    let why = got[0]["why"].as_str().unwrap();
    assert!(why.contains("at capacity"), "{why}");
    assert_eq!(got[1]["third"], "ok");
}

/// How many of the clients' connections to the gateway's port a process named `holder`
/// holds (`ss` shows each socket's owner).
fn client_sockets_held_by(p: &Platform, holder: &str) -> usize {
    let port = p.url.rsplit(':').next().unwrap().trim_end_matches('/');
    let sockets = virga_testkit::stdout_of(
        Command::new("ss")
            .args(["-tnpH", "state", "established"])
            .arg(format!("( sport = :{port} )")),
    );
    sockets
        .lines()
        .filter(|l| l.contains(&format!("((\"{holder}\"")))
        .count()
}

/// A handshake and a first frame written at once (before the `101` came back): the frame
/// reaches the function even though the gateway read it along with the handshake.
const EARLY_FRAME: &str = r#"
import socket
host, port = API.split("//")[1].split(":")
s = socket.create_connection((host, int(port)))
key = base64.b64encode(os.urandom(16)).decode()
head = (f"GET /function/ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
payload, mask = b"early bird", os.urandom(4)
frame = bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
s.sendall(head.encode() + frame)
got = b""
while b"early bird" not in got:
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
out(status=got.split(b" ")[1].decode(), echoed=b"early bird" in got)
"#;

/// A quiet socket (closed by the idle timeout) and a chatty one (closed at its lifetime), side
/// by side; the chatty one asks mid-way whether the function still has an instance.
const LIMITS: &str = r#"
async def quiet():
    async with dial() as ws:
        await ws.send("once")
        await ws.recv()
        t = time.monotonic()
        code = await closed(ws)
        return {"after": time.monotonic() - t, "code": code}
async def chatty():
    async with dial() as ws:
        t, n, available = time.monotonic(), 0, None
        try:
            while True:
                await ws.send(f"m{n}")
                await ws.recv()
                n += 1
                if n == 8:
                    available = get("/system/function/short")["availableReplicas"]
                await asyncio.sleep(0.4)
        except ConnectionClosed:
            return {"after": time.monotonic() - t, "messages": n, "available": available}
async def main():
    q, c = await asyncio.gather(quiet(), chatty())
    out(quiet=q, chatty=c)
asyncio.run(main())
"#;

#[test]
fn idle_timeout_and_max_lifetime_close_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    // Idle after 1 s without calls, but an open socket is a call in flight.
    let mut fields = definition(
        json!({
            "virga.connection.idle-timeout": "1s",
            "virga.connection.max-lifetime": "4s",
        }),
        json!({}),
        None,
    );
    fields["labels"] = json!({
        "com.openfaas.scale.zero": "true",
        "com.openfaas.scale.zero-duration": "1s",
    });
    p.deploy_bundle(
        "short",
        &[("server.py", SERVER)],
        "python3 server.py",
        fields,
    );
    let got = client(&p, "short", LIMITS);
    let (quiet, chatty) = (&got[0]["quiet"], &got[0]["chatty"]);
    let after = |v: &Value| v["after"].as_f64().unwrap();
    assert!((0.9..2.5).contains(&after(quiet)), "idle: {quiet}");
    assert_eq!(
        quiet["code"],
        Value::Null,
        "closed by the gateway (FIN), not by a frame"
    );
    assert!((3.8..5.5).contains(&after(chatty)), "lifetime: {chatty}");
    assert!(
        chatty["messages"].as_u64().unwrap() >= 8,
        "traffic kept it from idling: {chatty}"
    );
    assert_eq!(
        chatty["available"], 1,
        "not scaled to zero while a socket is open"
    );
    let closed = |why: &str| {
        let s = series(
            "virga_function_connections_closed_total",
            "short",
            &format!(",reason=\"{why}\""),
        );
        metric(&p, &s)
    };
    assert_eq!((closed("idle"), closed("lifetime")), (1.0, 1.0));
    // With its sockets closed, the function does go to zero.
    let available = || p.get_json("/system/function/short")["availableReplicas"].clone();
    assert!(p.eventually(Duration::from_secs(15), || available() == 0));
}

/// Drain test client: a socket keeps working through `ACTION` (a scale-down or a redeploy,
/// done by the script) for half of the 4 s grace, a socket opened meanwhile lands on another
/// instance, and the first is closed once the grace is over.
const DRAIN: &str = r#"
async def main():
    async with dial() as old:
        await old.send("pid")
        old_pid = await old.recv()
        t = time.monotonic()
        status = ACTION()
        echoed = 0
        for i in range(8):
            await old.send(f"m{i}")
            if await old.recv() == f"m{i}":
                echoed += 1
            await asyncio.sleep(0.25)
        async with dial() as new:
            await new.send("pid")
            new_pid = await new.recv()
            code = await closed(old)
            closed_after = time.monotonic() - t
            await new.send("still here")
            new_works = await new.recv() == "still here"
        out(status=status, old_pid=old_pid, new_pid=new_pid, echoed=echoed, code=code,
            closed_after=closed_after, new_works=new_works)
asyncio.run(main())
"#;

fn assert_drained(got: &Value) {
    assert_eq!(
        got["echoed"], 8,
        "the socket worked through the grace: {got}"
    );
    assert_ne!(
        got["old_pid"], got["new_pid"],
        "new sockets go to a new instance"
    );
    assert_eq!(
        got["code"],
        Value::Null,
        "closed with a FIN after the grace: {got}"
    );
    let after = got["closed_after"].as_f64().unwrap();
    assert!(
        (3.9..8.0).contains(&after),
        "closed {after} s after the drain began"
    );
    assert_eq!(got["new_works"], true);
}

#[test]
fn a_scale_down_or_a_redeploy_drains_open_sockets_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let annotations = json!({"virga.connection.drain-grace": "4s"});
    deploy(&p, "ws", annotations.clone(), json!({}), None);

    let scale = r#"lambda: admin("POST", "/system/scale-function/ws", {"serviceName": "ws", "replicas": 0})"#;
    let got = client(&p, "ws", &format!("ACTION = {scale}\n{DRAIN}"));
    assert_eq!(got[0]["status"], 202);
    assert_drained(&got[0]);

    let mut body = definition(annotations, json!({"REVISION": "2"}), None);
    body["service"] = json!("ws");
    body["image"] = p.get_json("/system/function/ws")["image"].clone();
    let redeploy = format!("lambda: admin(\"PUT\", \"/system/functions\", {body})");
    let got = client(&p, "ws", &format!("ACTION = {redeploy}\n{DRAIN}"));
    assert_eq!(got[0]["status"], 200);
    assert_drained(&got[0]);
    let drained = series(
        "virga_function_connections_closed_total",
        "ws",
        ",reason=\"drained\"",
    );
    assert_eq!(metric(&p, &drained), 2.0);
}

#[test]
fn a_crash_mid_connection_closes_the_socket_and_the_next_call_works() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    deploy(&p, "ws", json!({}), json!({}), None);
    crash_then_serve(&p, "ws");
}

/// A socket whose function process dies is closed without a close frame; the process is
/// restarted and the next socket and the next plain call are served.
fn crash_then_serve(p: &Platform, name: &str) {
    let got = client(
        p,
        name,
        r#"
async def main():
    async with dial() as ws:
        await ws.send("pid")
        before = await ws.recv()
        await ws.send("crash")
        t = time.monotonic()
        code = await asyncio.wait_for(closed(ws), 10)
        out(code=code, after=time.monotonic() - t)
    async with dial() as ws:
        await ws.send("pid")
        out(restarted=(await ws.recv()) != before)
asyncio.run(main())
"#,
    );
    assert_eq!(got[0]["code"], Value::Null, "{}", got[0]);
    assert!(got[0]["after"].as_f64().unwrap() < 5.0, "{}", got[0]);
    assert_eq!(got[1]["restarted"], true);
    let r = p
        .anon(reqwest::Method::GET, &format!("/function/{name}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn websockets_under_runc() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(dir.path(), &[]);
    deploy(&p, "ws", json!({}), json!({}), None);
    let got = client(
        &p,
        "ws",
        r#"
async def main():
    async with dial() as ws:
        await ws.send("hello")
        text = await ws.recv()
        big = os.urandom(1 << 20)
        await ws.send(big)
        same = (await ws.recv()) == big
        pong = await ws.ping()
        await asyncio.wait_for(pong, 10)
        await ws.send("close 4003 sandboxed")
        out(text=text, same=same, code=await closed(ws))
asyncio.run(main())
"#,
    );
    assert_eq!(got[0], json!({"text": "hello", "same": true, "code": 4003}));
    // Inside the sandbox too, the watchdog (`/virga/watchdog`) holds the client's socket.
    let mut held = Interactive::start(
        &p,
        "ws",
        r#"
async def main():
    async with dial() as ws:
        await ws.send("hello")
        out(echo=await ws.recv())
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await ws.send("again")
        out(echo=await ws.recv())
asyncio.run(main())
"#,
    );
    assert_eq!(held.line(), r#"{"echo": "hello"}"#);
    assert_eq!(client_sockets_held_by(&p, "watchdog"), 1);
    assert_eq!(held.go(), r#"{"echo": "again"}"#);
    held.finish();
    crash_then_serve(&p, "ws");
}
