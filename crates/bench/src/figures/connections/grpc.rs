//! gRPC unary calls/s and latency through the gateway (`/function/NAME/virga.Bench/Echo`
//! on a fresh `virga up`, h2c to the gateway and on to the watchdog) against the same calls
//! directly on a standalone `virga-watchdog` (h2c), both in http mode in front of the same
//! trivially fast h2c gRPC upstream (`virga-bench grpc-upstream`).

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::json;

use crate::figures::Ctx;
use crate::grpc::{self, shape, Load};
use crate::platform::{Platform, Server, SCALE_MAX};
use crate::report::{Figure, Section, Target, Unit};

const PATH: &str = "/virga.Bench/Echo";

/// Deploys the gRPC echo, then measures the gateway against the direct watchdog.
pub fn run(ctx: &Ctx, s: &mut Section) -> Result<()> {
    let work = ctx.dir("connections")?;
    let mut platform = Platform::start(&ctx.bins, &work, &ctx.isolation)?;
    let bench = ctx.bins.bench.to_string_lossy().into_owned();
    if bench.contains(char::is_whitespace) {
        bail!("the path of virga-bench ({bench}) contains whitespace, which fprocess cannot hold");
    }
    let fprocess = format!("{bench} grpc-upstream");
    let upstream = "http://127.0.0.1:5000";
    eprintln!("connections: deploying the gRPC echo");
    platform.deploy_json(&json!({
        "service": "bench-grpc",
        "envProcess": fprocess,
        "envVars": {"mode": "http", "upstream_url": upstream},
        "labels": {SCALE_MAX: "1"},
    }))?;
    let via_gateway = format!("{}{PATH}", platform.function_url("bench-grpc"));
    if let Err(e) = grpc::wait_ok(&via_gateway, Duration::from_secs(30)) {
        return Err(platform.explain(e));
    }
    let server = Server::http_mode(
        &ctx.bins,
        &fprocess,
        upstream,
        &work,
        &work.join("watchdog-grpc.log"),
    )?;
    let direct = format!("{}{PATH}", server.url);
    grpc::wait_ok(&direct, Duration::from_secs(30))?;
    compare(ctx, s, &via_gateway, &direct)
}

/// Throughput and one-at-a-time latency, gateway against direct.
fn compare(ctx: &Ctx, s: &mut Section, via_gateway: &str, direct: &str) -> Result<()> {
    let tp = Load {
        connections: 2,
        streams: 16,
        duration: ctx.settings.throughput.duration,
    };
    let lat = Load {
        connections: 1,
        streams: 1,
        duration: ctx.settings.latency.duration,
    };
    let warm = |url: &str, load: &Load| {
        let load = Load {
            duration: ctx.settings.warmup,
            ..load.clone()
        };
        grpc::run(url, &load).map(|_| ())
    };
    let (gw, wd) = ("gateway", "direct watchdog");
    warm(direct, &tp)?;
    let d = s.measured(
        format!("gRPC unary, {wd}, {}", shape(&tp)),
        grpc::run(direct, &tp)?,
    );
    warm(via_gateway, &tp)?;
    let g = s.measured(
        format!("gRPC unary, {gw}, {}", shape(&tp)),
        grpc::run(via_gateway, &tp)?,
    );
    let dl = s.measured(
        format!("gRPC unary, {wd}, {}", shape(&lat)),
        grpc::run(direct, &lat)?,
    );
    let gl = s.measured(
        format!("gRPC unary, {gw}, {}", shape(&lat)),
        grpc::run(via_gateway, &lat)?,
    );
    let fig = |name: &str, value: f64, baseline: f64, unit: Unit| Figure {
        name: name.into(),
        value_label: gw.into(),
        value,
        baseline_label: wd.into(),
        baseline,
        unit,
        target: Target::None,
    };
    s.figure(fig(
        "gRPC unary: calls/s, 32 in flight",
        g.rps,
        d.rps,
        Unit::ReqPerSec,
    ));
    s.figure(fig(
        "gRPC unary: p50 latency, 1 in flight",
        gl.p50_us,
        dl.p50_us,
        Unit::Micros,
    ));
    s.figure(fig(
        "gRPC unary: p99 latency, 1 in flight",
        gl.p99_us,
        dl.p99_us,
        Unit::Micros,
    ));
    Ok(())
}
