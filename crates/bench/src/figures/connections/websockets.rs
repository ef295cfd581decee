//! WebSocket echo round trips through the gateway against the same echo server directly
//! behind a standalone watchdog, in the same run: a Python server (the `websockets` package,
//! what a user deploys) and a trivially fast one (`virga-bench ws-echo`), so the platform's
//! own cost is not hidden behind Python's.

use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use tungstenite::{Message, WebSocket};

use crate::figures::{Ctx, BODY};
use crate::platform::{Platform, Server};
use crate::report::{Figure, Section, Target, Unit};
use crate::runner::Stats;

/// The Python function: an echo server on the `websockets` package, on the port of
/// `upstream_url`.
const PYTHON_ECHO: &str = r#"
import asyncio, os
from websockets.asyncio.server import serve
PORT = int(os.environ["upstream_url"].rsplit(":", 1)[1].split("/")[0])
async def echo(ws):
    async for message in ws:
        await ws.send(message)
async def main():
    async with serve(echo, "127.0.0.1", PORT, ping_interval=None) as server:
        await server.serve_forever()
asyncio.run(main())
"#;

/// Measures both echo servers; a failure keeps the figures measured so far.
pub fn run(ctx: &Ctx, s: &mut Section) -> Result<()> {
    let work = ctx.dir("connections-ws")?;
    let mut platform = Platform::start(&ctx.bins, &ctx.dir("connections-ws-up")?, &ctx.isolation)?;
    let bench = ctx.bins.bench.to_string_lossy().into_owned();
    let script = work.join("echo.py");
    std::fs::write(&script, PYTHON_ECHO).with_context(|| format!("write {}", script.display()))?;
    let script = script.to_string_lossy().into_owned();
    for path in [&bench, &script] {
        if path.contains(char::is_whitespace) {
            bail!("the path {path} contains whitespace, which fprocess cannot hold");
        }
    }
    for (what, name, fprocess, throughput) in [
        (
            "Python",
            "bench-ws-py",
            format!("python3 {script}"),
            Some(0.8),
        ),
        ("fast echo", "bench-ws", format!("{bench} ws-echo"), None),
    ] {
        eprintln!("connections: deploying the {what} WebSocket function");
        let upstream = "http://127.0.0.1:5000";
        platform.deploy_json(&json!({
            "service": name,
            "envProcess": fprocess,
            "envVars": {"mode": "http", "upstream_url": upstream},
            "labels": {"com.openfaas.scale.max": "1"},
        }))?;
        let via_gateway = platform.function_url(name);
        if let Err(e) = wait_echo(&via_gateway) {
            return Err(platform.explain(e));
        }
        let log = work.join(format!("watchdog-{name}.log"));
        let direct = Server::http_mode(&ctx.bins, &fprocess, upstream, &work, &log)?;
        wait_echo(&direct.url)?;
        echo_figures(ctx, s, what, &via_gateway, &direct.url, throughput)?;
    }
    Ok(())
}

/// The WebSocket echo figures of `via_gateway` against `direct`, the throughput held to
/// `throughput` (a ratio) if given.
fn echo_figures(
    ctx: &Ctx,
    s: &mut Section,
    what: &str,
    via_gateway: &str,
    direct: &str,
    throughput: Option<f64>,
) -> Result<()> {
    let (gw, wd) = ("gateway", "direct watchdog");
    let sockets = ctx.settings.throughput.connections as usize;
    let (tp, lat) = (
        ctx.settings.throughput.duration,
        ctx.settings.latency.duration,
    );
    let mut run = |url: &str, label: &str, n: usize, d: Duration| -> Result<Stats> {
        echo_load(url, n, ctx.settings.warmup)?;
        let stats = echo_load(url, n, d)?;
        Ok(s.measured(
            format!("{what} WebSocket echo, {label}, {n} socket(s)"),
            stats,
        ))
    };
    // One socket first: right after 32 sockets, whichever path came next measured slower.
    let dl = run(direct, wd, 1, lat)?;
    let gl = run(via_gateway, gw, 1, lat)?;
    let d = run(direct, wd, sockets, tp)?;
    let g = run(via_gateway, gw, sockets, tp)?;
    let fig = |name: String, value: f64, baseline: f64, unit: Unit, target: Target| Figure {
        name,
        value_label: gw.into(),
        value,
        baseline_label: wd.into(),
        baseline,
        unit,
        target,
    };
    s.figure(fig(
        format!("{what}: WebSocket echo messages/s, {sockets} sockets"),
        g.rps,
        d.rps,
        Unit::MsgPerSec,
        throughput.map_or(Target::None, Target::RatioAtLeast),
    ));
    s.figure(fig(
        format!("{what}: WebSocket echo p50 round trip, 1 socket"),
        gl.p50_us,
        dl.p50_us,
        Unit::Micros,
        Target::AddedAtMost(100.0),
    ));
    s.figure(fig(
        format!("{what}: WebSocket echo p99 round trip, 1 socket"),
        gl.p99_us,
        dl.p99_us,
        Unit::Micros,
        Target::None,
    ));
    Ok(())
}

/// A WebSocket to `url` (`http://HOST:PORT/PATH`), its echo checked once.
fn dial(url: &str) -> Result<WebSocket<TcpStream>> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url} is not http://"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let stream = TcpStream::connect(authority).with_context(|| format!("connect {authority}"))?;
    stream.set_nodelay(true)?;
    let (mut ws, _) = tungstenite::client(format!("ws://{rest}"), stream)
        .map_err(|e| anyhow::anyhow!("WebSocket handshake with {url}: {e}"))?;
    ws.send(Message::text(BODY))?;
    match ws.read()? {
        Message::Text(t) if t.as_str() == BODY => Ok(ws),
        other => bail!("{url} echoed {other:?}"),
    }
}

/// Dial `url` until a socket echoes (the function may still be starting), 30 s at most.
fn wait_echo(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match dial(url) {
            Ok(mut ws) => {
                let _ = ws.close(None);
                return Ok(());
            }
            Err(e) if Instant::now() > deadline => return Err(e.context("no echo in 30 s")),
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// `sockets` sockets to `url`, each sending a message and waiting for its echo in turn for
/// `duration` (counted once all are open): round trips per second and their latencies.
fn echo_load(url: &str, sockets: usize, duration: Duration) -> Result<Stats> {
    let start = Arc::new(Barrier::new(sockets + 1));
    let threads: Vec<_> = (0..sockets)
        .map(|_| {
            let (url, start) = (url.to_string(), start.clone());
            thread::spawn(move || -> Result<Vec<f64>> {
                let ws = dial(&url);
                start.wait();
                let mut ws = ws?;
                let end = Instant::now() + duration;
                let mut samples = Vec::with_capacity(1 << 16);
                while Instant::now() < end {
                    let t = Instant::now();
                    ws.send(Message::text(BODY))?;
                    ws.read()?;
                    samples.push(t.elapsed().as_secs_f64() * 1e6);
                }
                let _ = ws.close(None);
                let _ = ws.flush();
                Ok(samples)
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    let mut all = Vec::new();
    for t in threads {
        let samples = t
            .join()
            .map_err(|_| anyhow::anyhow!("a WebSocket client thread panicked"))??;
        all.extend(samples);
    }
    let elapsed = began.elapsed().as_secs_f64();
    let mut stats = Stats::from_samples(&mut all).context("no round trip completed")?;
    stats.rps = stats.count as f64 / elapsed;
    Ok(stats)
}
