//! HTTP mode's upgrades against the real binary, with the `websockets` package from PyPI on
//! both sides: a WebSocket through the watchdog, and SIGTERM letting it go on for
//! `drain_grace` before it is closed and the watchdog exits.

use std::process::Command;

use virga_testkit::free_port;
use virga_testkit::watchdog::{script, Watchdog};

const SERVER: &str = r#"
import asyncio, sys
from websockets.asyncio.server import serve
async def echo(ws):
    async for msg in ws:
        await ws.send(msg)
async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), max_size=None, ping_interval=None) as s:
        await s.serve_forever()
asyncio.run(main())
"#;

/// Echoes through the watchdog, SIGTERMs it (argv 2) and keeps echoing for 1.5 s, tries a
/// new connection, then waits for the old one to close.
const CLIENT: &str = r#"
import asyncio, json, os, signal, sys, time
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
async def main():
    async with connect(sys.argv[1], max_size=None, ping_interval=None) as ws:
        await ws.send(b"\x01" * (1 << 20))
        big = len(await ws.recv())
        os.kill(int(sys.argv[2]), signal.SIGTERM)
        t = time.monotonic()
        echoed = 0
        for i in range(6):
            await ws.send(f"m{i}")
            echoed += (await ws.recv()) == f"m{i}"
            await asyncio.sleep(0.25)
        try:
            async with connect(sys.argv[1], open_timeout=2):
                refused = False
        except (OSError, asyncio.TimeoutError):
            refused = True
        try:
            while True:
                await ws.recv()
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
        print(json.dumps({"big": big, "echoed": echoed, "refused": refused, "code": code,
                          "closed_after": time.monotonic() - t}))
asyncio.run(main())
"#;

#[test]
fn sigterm_lets_upgraded_connections_go_on_for_the_drain_grace() {
    let dir = tempfile::tempdir().unwrap();
    let server = script(dir.path(), "server.py", SERVER);
    let port = free_port();
    let fprocess = format!("python3 {} {port}", server.display());
    let upstream = format!("http://127.0.0.1:{port}");
    let mut wd = Watchdog::start(&[
        ("mode", "http"),
        ("fprocess", fprocess.as_str()),
        ("upstream_url", upstream.as_str()),
        ("drain_grace", "3s"),
        ("write_timeout", "1s"),
    ]);
    let out = Command::new("timeout")
        .args(["60", "python3", "-c", CLIENT])
        .arg(format!("ws://{}/socket", wd.addr))
        .arg(wd.pid().unwrap().to_string())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(got["big"], 1 << 20, "{got}");
    assert_eq!(
        got["echoed"], 6,
        "the socket works through the grace: {got}"
    );
    assert_eq!(
        got["refused"], true,
        "no new connections once stopping: {got}"
    );
    assert_eq!(
        got["code"],
        serde_json::Value::Null,
        "closed with a FIN: {got}"
    );
    let after = got["closed_after"].as_f64().unwrap();
    assert!(
        (2.9..5.0).contains(&after),
        "closed {after} s after SIGTERM"
    );
    assert!(
        wd.stop().is_some_and(|s| s.success()),
        "the watchdog exits cleanly"
    );
}
