//! Durable async calls: how fast `/async-function` accepts calls (each one fdatasync'd before
//! its 202, many sharing one sync through group commit) against this machine's single-fsync
//! rate, and how fast the workers drain them into a no-op function against the same function
//! called synchronously; for the embedded queue and for NATS JetStream.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{shape, Ctx, BODY};
use crate::platform::{Platform, ADMIN_PASSWORD};
use crate::report::{Figure, Section, Target, Unit};
use crate::runner::{free_port, wait_ok, Stats};

/// Name for `--only`.
pub const NAME: &str = "queue";

/// Section heading.
pub const TITLE: &str = "Async calls: durable accepts and drain rate";

/// What the figures mean.
pub const ABOUT: &str = "\
`POST /async-function/bench-noop` answers 202 only once the call is durably stored. \
*Accepted/s* is wrk's rate on that route (`wrk -t2 -c32`); its baseline is this machine's \
rate of single fdatasyncs (64-byte append + fdatasync, timed in-process, 1e6 / p50 µs): a \
ratio above 1× is group commit at work (targets: ≥ 5,000 accepted/s and ≥ 2,000 drained/s \
on the embedded queue). *Drained/s* is calls completed by the workers per second, from the \
start of the measured accept run until the queue is empty, into an http-mode no-op function \
(`virga-bench fast-upstream`); its baseline is the same function called synchronously \
through `/function/` with the same wrk load. NATS rows use a local `nats-server -js` \
(JetStream's own file-store syncing, not an fdatasync per message).";

/// Measures both backends and fills the section.
pub fn run(ctx: &Ctx, s: &mut Section) -> Result<()> {
    let work = ctx.dir(NAME)?;
    let fsync = fsync_latency(&work, ctx.settings.iterations / 4)?;
    let fsync = s.measured("single 64-byte append + fdatasync, in-process", fsync);
    let fsync_rate = 1e6 / fsync.p50_us;
    for backend in ["embedded", "nats"] {
        let nats = if backend == "nats" {
            match NatsServer::start(&work) {
                Ok(n) => Some(n),
                Err(e) => {
                    eprintln!("queue: skipping NATS: {e:#}");
                    continue;
                }
            }
        } else {
            None
        };
        let platform = start_platform(ctx, backend, nats.as_ref())?;
        measure_backend(ctx, s, &platform, backend, fsync_rate)?;
        // Before the NATS server it uses.
        drop(platform);
    }
    Ok(())
}

/// A platform on `backend`'s queue with the no-op function deployed and answering.
fn start_platform(ctx: &Ctx, backend: &str, nats: Option<&NatsServer>) -> Result<Platform> {
    // `virga up --queue` reads VIRGA_QUEUE; the platform inherits this environment.
    let queue = nats.map_or("embedded".to_string(), |n| n.url.clone());
    std::env::set_var("VIRGA_QUEUE", &queue);
    let dir = ctx.dir(&format!("{NAME}-{backend}"))?;
    let platform = Platform::start(&ctx.bins, &dir, &ctx.isolation);
    std::env::remove_var("VIRGA_QUEUE");
    let mut platform = platform?;
    let fprocess = format!("{} fast-upstream", ctx.bins.bench.to_string_lossy());
    platform.deploy_json(&json!({
        "service": "bench-noop",
        "envProcess": fprocess,
        "envVars": {"mode": "http", "upstream_url": "http://127.0.0.1:5000"},
    }))?;
    if let Err(e) = wait_ok(
        &platform.function_url("bench-noop"),
        BODY,
        Duration::from_secs(30),
    ) {
        return Err(platform.explain(e));
    }
    Ok(platform)
}

/// The sync baseline, the accept run and the drain on one platform; their two figures.
fn measure_backend(
    ctx: &Ctx,
    s: &mut Section,
    platform: &Platform,
    backend: &str,
    fsync_rate: f64,
) -> Result<()> {
    let sync_url = platform.function_url("bench-noop");
    let load = &ctx.settings.throughput;
    ctx.warm(&sync_url, load)?;
    let sync = ctx.load(&sync_url, load)?;
    let sync = s.measured(
        format!("no-op via /function/ ({backend}), {}", shape(load)),
        sync,
    );
    let async_url = format!("{}/async-function/bench-noop", platform.url);
    ctx.warm(&async_url, load)?;
    drain(&platform.url, Duration::from_secs(300))?;
    let before = completed(&platform.url)?;
    let started = Instant::now();
    let acc = ctx.load(&async_url, load)?;
    let acc = s.measured(
        format!("/async-function accepts ({backend}), {}", shape(load)),
        acc,
    );
    drain(&platform.url, Duration::from_secs(300))?;
    let drained = (completed(&platform.url)? - before) as f64 / started.elapsed().as_secs_f64();
    // The targets are for the embedded queue; NATS rows are information.
    let embedded = backend == "embedded";
    let fig = |name: String, value: f64, bl: &str, baseline: f64, at_least: f64| Figure {
        name,
        value_label: "async".into(),
        value,
        baseline_label: bl.into(),
        baseline,
        unit: Unit::ReqPerSec,
        target: if embedded {
            Target::AtLeast(at_least)
        } else {
            Target::None
        },
    };
    s.figure(fig(
        format!("{backend}: accepted/s (durable)"),
        acc.rps,
        "single fsyncs/s",
        fsync_rate,
        5_000.0,
    ));
    s.figure(fig(
        format!("{backend}: drained/s, no-op function"),
        drained,
        "sync /function/",
        sync.rps,
        2_000.0,
    ));
    Ok(())
}

/// Per-operation latency of appending 64 bytes and fdatasyncing, in µs.
fn fsync_latency(dir: &Path, n: usize) -> Result<Stats> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).context("create the fsync probe")?;
    let mut samples = Vec::with_capacity(n.max(50));
    for i in 0..n.max(50) + 20 {
        let t = Instant::now();
        f.write_all(&[b'x'; 64])?;
        f.sync_data()?;
        if i >= 20 {
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = std::fs::remove_file(&path);
    Stats::from_samples(&mut samples).context("no fsync samples")
}

fn queues(base: &str) -> Result<Value> {
    reqwest::blocking::Client::new()
        .get(format!("{base}/system/virga/queues"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()
        .context("GET /system/virga/queues")?
        .json()
        .context("read /system/virga/queues")
}

/// Calls the workers completed since start.
pub(super) fn completed(base: &str) -> Result<u64> {
    Ok(queues(base)?["completed"].as_u64().unwrap_or(0))
}

/// Wait until no call is waiting or in flight.
pub(super) fn drain(base: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let q = queues(base)?;
        let left: u64 = q["queues"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|q| q["depth"].as_u64().unwrap_or(0) + q["inflight"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the queue did not drain within {limit:?}: {q}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A local nats-server with JetStream, killed on drop.
pub(super) struct NatsServer {
    child: Child,
    /// `nats://127.0.0.1:PORT`.
    pub(super) url: String,
    /// Its port.
    pub(super) port: u16,
}

impl NatsServer {
    /// Start one with its store under `work`.
    pub(super) fn start(work: &Path) -> Result<NatsServer> {
        let port = free_port()?;
        let store = work.join("nats");
        std::fs::create_dir_all(&store)?;
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start nats-server (scripts/setup installs it)")?;
        crate::runner::wait_listening(port, "nats-server")?;
        Ok(NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            port,
        })
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
