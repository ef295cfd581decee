//! Gateway overhead on a warm http-mode function: the same bundle measured through the
//! gateway (`/function/NAME` on a fresh `virga up`) and directly on a standalone
//! `virga-watchdog` started from the unpacked bundle, first with the python3-http starter
//! (what a user deploys), then with a trivially fast upstream (`virga-bench
//! fast-upstream`) so the gateway's own cost is not hidden behind Python's.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::json;

use super::{shape, Ctx, BODY};
use crate::platform::{unpack_bundle, Platform, Server};
use crate::report::{Figure, Section, Target, Unit};
use crate::runner::wait_ok;

/// Name for `--only`.
pub const NAME: &str = "gateway";

/// Section heading.
pub const TITLE: &str = "Gateway overhead, warm http-mode function";

/// What the figures mean.
pub const ABOUT: &str = "\
The python3-http starter function (`virga new NAME --lang python3-http`, deployed with \
`virga deploy` on a fresh `virga up`, one instance: `com.openfaas.scale.max: 1` keeps the \
autoscaler from adding replicas under the load) is measured through the gateway \
(`POST /function/NAME`) and, as the baseline, directly on a standalone `virga-watchdog` \
started from the same bundle (`build/NAME.tar.gz` unpacked, the watchdog environment from \
its `virga-bundle.json`, `python3 index.py` upstream). The ratio of throughputs \
(`wrk -t2 -c32`) is what a function keeps of its capacity behind the gateway (target \
≥ 0.85×); the p50 difference of one-at-a-time requests (`wrk -t1 -c1`) is the latency \
the gateway adds per request (target ≤ +150 µs). Latencies under load are reported for \
information. The *fast upstream* rows repeat this with the watchdog in http mode in \
front of a trivial keep-alive HTTP server (`virga-bench fast-upstream`, answers `ok`), \
so the upstream costs next to nothing and the difference is the gateway's own cost; \
there only the added latency has a target, since with a near-free upstream the \
gateway's extra proxy hop is a large share of the work and shares the same two cores.";

/// Measures both upstreams; a failure keeps the figures measured so far.
pub fn run(ctx: &Ctx, s: &mut Section) -> Result<()> {
    let work = ctx.dir(NAME)?;
    let mut platform = Platform::start(&ctx.bins, &work, &ctx.isolation)?;

    // python3-http starter, deployed the way a user would.
    eprintln!("gateway: deploying the python3-http starter");
    let name = "bench-py";
    let archive = platform.deploy_template(name, "python3-http")?;
    let via_gateway = platform.function_url(name);
    let answer = match wait_ok(&via_gateway, BODY, Duration::from_secs(60)) {
        Ok(answer) => answer,
        Err(e) => return Err(platform.explain(e)),
    };
    let bundle = ctx.dir("gateway/bundle")?;
    let env = unpack_bundle(&archive, &bundle)?;
    let direct = Server::start(&ctx.bins, &env, &bundle, &work.join("watchdog-py.log"))?;
    same_answer(
        &answer,
        &wait_ok(&direct.url, BODY, Duration::from_secs(30))?,
    )?;
    compare(
        ctx,
        s,
        "python3-http",
        &via_gateway,
        &direct.url,
        Some(0.85),
    )?;
    proxy_floor(ctx, s, "python3-http", &direct.url, &work)?;
    drop(direct);

    // A trivially fast upstream behind the same watchdog http mode.
    eprintln!("gateway: deploying the fast upstream");
    let bench = ctx.bins.bench.to_string_lossy().into_owned();
    if bench.contains(char::is_whitespace) {
        bail!("the path of virga-bench ({bench}) contains whitespace, which fprocess cannot hold");
    }
    let fprocess = format!("{bench} fast-upstream");
    let upstream = "http://127.0.0.1:5000";
    platform.deploy_json(&json!({
        "service": "bench-fast",
        "envProcess": fprocess,
        "envVars": {"mode": "http", "upstream_url": upstream},
        "labels": {"com.openfaas.scale.max": "1"},
    }))?;
    let via_gateway = platform.function_url("bench-fast");
    let answer = match wait_ok(&via_gateway, BODY, Duration::from_secs(30)) {
        Ok(answer) => answer,
        Err(e) => return Err(platform.explain(e)),
    };
    let direct = Server::http_mode(
        &ctx.bins,
        &fprocess,
        upstream,
        &work,
        &work.join("watchdog-fast.log"),
    )?;
    same_answer(
        &answer,
        &wait_ok(&direct.url, BODY, Duration::from_secs(30))?,
    )?;
    compare(ctx, s, "fast upstream", &via_gateway, &direct.url, None)?;
    Ok(())
}

/// Throughput through `virga-bench bare-proxy` (a hyper reverse proxy and nothing else) in
/// front of the same watchdog: what any gateway hop costs here, next to the direct baseline.
fn proxy_floor(ctx: &Ctx, s: &mut Section, what: &str, direct: &str, work: &Path) -> Result<()> {
    let tp = &ctx.settings.throughput;
    let proxy = Server::bare_proxy(&ctx.bins, direct, &work.join("bare-proxy.log"))?;
    ctx.warm(direct, tp)?;
    let d = ctx.load(direct, tp)?;
    let d = s.measured(format!("{what}, direct watchdog (again), {}", shape(tp)), d);
    ctx.warm(&proxy.url, tp)?;
    let b = ctx.load(&proxy.url, tp)?;
    let b = s.measured(format!("{what}, bare proxy, {}", shape(tp)), b);
    s.figure(Figure {
        name: format!("{what}: throughput, any proxy hop (floor)"),
        value_label: "bare proxy".into(),
        value: b.rps,
        baseline_label: "direct watchdog".into(),
        baseline: d.rps,
        unit: Unit::ReqPerSec,
        target: Target::None,
    });
    Ok(())
}

/// Both paths must run the same function.
fn same_answer(via_gateway: &str, direct: &str) -> Result<()> {
    if via_gateway != direct {
        bail!("the gateway answered {via_gateway:?} but the direct watchdog {direct:?}");
    }
    Ok(())
}

/// Throughput and latency of one function through the gateway vs directly.
fn compare(
    ctx: &Ctx,
    s: &mut Section,
    what: &str,
    via_gateway: &str,
    direct: &str,
    throughput_target: Option<f64>,
) -> Result<()> {
    let tp = &ctx.settings.throughput;
    let lat = &ctx.settings.latency;
    let gw = "gateway";
    let wd = "direct watchdog";

    ctx.warm(direct, tp)?;
    let d = ctx.load(direct, tp)?;
    let d = s.measured(format!("{what}, {wd}, {}", shape(tp)), d);
    ctx.warm(via_gateway, tp)?;
    let g = ctx.load(via_gateway, tp)?;
    let g = s.measured(format!("{what}, {gw}, {}", shape(tp)), g);
    let dl = ctx.load(direct, lat)?;
    let dl = s.measured(format!("{what}, {wd}, {}", shape(lat)), dl);
    let gl = ctx.load(via_gateway, lat)?;
    let gl = s.measured(format!("{what}, {gw}, {}", shape(lat)), gl);

    let fig = |name: String, value: f64, baseline: f64, unit: Unit, target: Target| Figure {
        name,
        value_label: gw.into(),
        value,
        baseline_label: wd.into(),
        baseline,
        unit,
        target,
    };
    let c = tp.connections;
    s.figure(fig(
        format!("{what}: throughput, {c} connections"),
        g.rps,
        d.rps,
        Unit::ReqPerSec,
        throughput_target.map_or(Target::None, Target::RatioAtLeast),
    ));
    s.figure(fig(
        format!("{what}: p50 latency, 1 connection"),
        gl.p50_us,
        dl.p50_us,
        Unit::Micros,
        Target::AddedAtMost(150.0),
    ));
    s.figure(fig(
        format!("{what}: p99 latency, 1 connection"),
        gl.p99_us,
        dl.p99_us,
        Unit::Micros,
        Target::None,
    ));
    s.figure(fig(
        format!("{what}: p50 latency, {c} connections"),
        g.p50_us,
        d.p50_us,
        Unit::Micros,
        Target::None,
    ));
    s.figure(fig(
        format!("{what}: p99 latency, {c} connections"),
        g.p99_us,
        d.p99_us,
        Unit::Micros,
        Target::None,
    ));
    Ok(())
}
