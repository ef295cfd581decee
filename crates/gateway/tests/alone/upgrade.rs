//! WebSockets through the gateway alone (the `websockets` package from PyPI on both sides):
//! the handshake and frames cross it, the listener's idle limit does not apply to an upgraded
//! connection but its connection cap does (the client's socket handed to the watchdog, its
//! slot kept), an upgrade request with a body is refused, and a refused hand-off is spliced
//! by the gateway instead.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use virga_gateway::{GatewayConfig, ServeConfig};
use virga_testkit::free_port;
use virga_testkit::watchdog::script;

use crate::{answer, Gateway};

const SERVER: &str = r#"
import asyncio, sys
from websockets.asyncio.server import serve
async def echo(ws):
    async for msg in ws:
        await ws.send(msg)
async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), ping_interval=None) as s:
        await s.serve_forever()
asyncio.run(main())
"#;

/// Echoes, stays quiet for 2.5 s (longer than the listener's 1 s idle limit), echoes again.
const CLIENT: &str = r#"
import asyncio, sys
from websockets.asyncio.client import connect
async def main():
    async with connect(sys.argv[1], ping_interval=None, open_timeout=30) as ws:
        await ws.send("before")
        assert await ws.recv() == "before"
        await asyncio.sleep(2.5)
        await ws.send(b"after")
        assert await ws.recv() == b"after"
        print(ws.response.headers["X-Call-Id"])
asyncio.run(main())
"#;

/// A gateway serving the echo server as `ws`, its listener held to `serve`; the socket URL.
async fn start(serve: ServeConfig, dir: &std::path::Path) -> (Gateway, String) {
    let g = Gateway::start_serving(GatewayConfig::default(), serve).await;
    let server = script(dir, "server.py", SERVER);
    let port = free_port();
    let env = json!({"mode": "http", "upstream_url": format!("http://127.0.0.1:{port}")});
    let process = format!("python3 {} {port}", server.display());
    g.deploy("ws", &process, json!({"envVars": env})).await;
    let url = format!("{}/function/ws", g.url.replacen("http://", "ws://", 1));
    (g, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_outlives_the_listeners_idle_limit() {
    let serve = ServeConfig {
        idle_timeout: Duration::from_secs(1),
        ..ServeConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (g, url) = start(serve, dir.path()).await;
    let out = tokio::process::Command::new("timeout")
        .args(["60", "python3", "-c", CLIENT, &url])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim().len(),
        36,
        "the 101 carries X-Call-Id: {stdout}"
    );

    let r = g
        .anon(Method::GET, "/function/ws")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body("a body")
        .send()
        .await
        .unwrap();
    let (status, text) = answer(r).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("cannot carry a body"), "{text}");
}

/// Opens a socket, says so, and closes it when told (a line on stdin).
const HOLDER: &str = r#"
import asyncio, sys
from websockets.asyncio.client import connect
async def main():
    async with connect(sys.argv[1], open_timeout=30) as ws:
        await ws.send("hi")
        await ws.recv()
        print("open", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_keeps_its_connection_slot() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let serve = ServeConfig {
        max_connections: 1,
        reserved_connections: 1,
        idle_timeout: Duration::from_millis(500),
        ..ServeConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let (g, url) = start(serve, dir.path()).await;
    // The deploy's kept-alive connection idles out, freeing the one public slot.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut holder = tokio::process::Command::new("timeout")
        .args(["60", "python3", "-c", HOLDER, &url])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("open"));
    // The socket holds the one public slot: another call gets a reserve one, not served.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let call = || client.get(format!("{}/function/ws", g.url)).send();
    let (status, text) = answer(call().await.unwrap()).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("connection limit"), "{text}");
    holder
        .stdin
        .take()
        .unwrap()
        .write_all(b"close\n")
        .await
        .unwrap();
    assert!(holder.wait().await.unwrap().success());
    // Its slot is free once it closed (the echo server answers a plain GET with 426).
    let mut freed = false;
    for _ in 0..100 {
        if call().await.unwrap().status() == 426 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the closed socket's slot was not freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_hand_off_is_spliced_by_the_gateway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_serving(GatewayConfig::default(), ServeConfig::default()).await;
    let server = script(dir.path(), "server.py", SERVER);
    let port = free_port();
    let socket = dir.path().join("h.sock");
    let env = json!({
        "mode": "http",
        "upstream_url": format!("http://127.0.0.1:{port}"),
        "handoff_socket": socket,
    });
    let process = format!("python3 {} {port}", server.display());
    g.deploy("ws", &process, json!({"envVars": env})).await;
    // Something else answers on the watchdog's hand-off path now, and refuses the offer.
    std::fs::remove_file(&socket).unwrap();
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let offers = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut line = vec![0u8; 128];
        let n = s.read(&mut line).await.unwrap();
        s.write_all(b"0").await.unwrap();
        String::from_utf8_lossy(&line[..n]).into_owned()
    });
    let url = format!("{}/function/ws", g.url.replacen("http://", "ws://", 1));
    let out = tokio::process::Command::new("timeout")
        .args(["60", "python3", "-c", CLIENT, &url])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "frames cross the gateway's own splice: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offer = tokio::time::timeout(Duration::from_secs(5), offers)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        offer.split(' ').count(),
        4,
        "ID IDLE LIFETIME PENDING: {offer:?}"
    );
}
