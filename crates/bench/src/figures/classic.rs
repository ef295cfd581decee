//! Classic-mode per-request latency: a `cat` function (the watchdog forks `cat` for each
//! request) called one request at a time through the gateway and directly on a standalone
//! watchdog in serializing mode, against the floor of any classic function: a bare
//! fork/exec of `cat` measured in-process by virga-bench.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::{shape, Ctx, BODY};
use crate::platform::{Platform, Server};
use crate::report::{Figure, Section, Target, Unit};
use crate::runner::{wait_ok, Stats};

/// Name for `--only`.
pub const NAME: &str = "classic";

/// Section heading.
pub const TITLE: &str = "Classic-mode per-request latency vs bare fork/exec";

/// What the figures mean.
pub const ABOUT: &str = "\
A classic function runs one process per request. The function \
`{\"service\":\"NAME\",\"envProcess\":\"cat\"}` (one instance) is deployed through the OpenFaaS API and \
called one request at a time (`wrk -t1 -c1`, body `hello`) through the gateway; the \
baseline is what no implementation can avoid: a bare fork/exec of `cat` timed inside \
virga-bench (spawn with piped stdin and stdout, write `hello`, close stdin, read the \
answer, wait; iterated). The gateway's p50 over fork/exec's p50 has a target of \
≤ 1.2×. The same function called directly on a standalone watchdog \
(`fprocess=cat mode=serializing`) shows how the cost splits between the watchdog and the \
gateway (the *gateway's share* row), and the same watchdog behind `virga-bench bare-proxy` \
(a hyper reverse proxy with nothing but the hop: no routing, auth, metrics or headers) \
shows what any gateway in front of the watchdog costs on this machine (the *floor* row) \
and what Virga's gateway adds beyond it (the last row). Where the floor is itself above \
1.2×, no gateway in front of a watchdog meets the target on that machine: the cost is the \
extra process hop (two more wake-ups and cache refills per call), not the gateway's work.";

/// Measures the three paths and fills the section.
pub fn run(ctx: &Ctx, s: &mut Section) -> Result<()> {
    let work = ctx.dir(NAME)?;
    let mut platform = Platform::start(&ctx.bins, &work, &ctx.isolation)?;
    eprintln!("classic: deploying cat");
    platform.deploy_json(&json!({
        "service": "bench-cat",
        "envProcess": "cat",
        "labels": {"com.openfaas.scale.max": "1"},
    }))?;
    let via_gateway = platform.function_url("bench-cat");
    match wait_ok(&via_gateway, BODY, Duration::from_secs(30)) {
        Ok(answer) if answer == BODY => {}
        Ok(answer) => bail!("the cat function answered {answer:?}, not {BODY:?}"),
        Err(e) => return Err(platform.explain(e)),
    }
    let (direct, proxy) = start_direct(ctx, &work)?;

    // The baseline is sampled half before and half after the wrk runs, so a change in
    // the machine's load during the run weighs on both sides alike.
    let n = ctx.settings.iterations;
    let mut samples = fork_exec(n / 2)?;

    let lat = &ctx.settings.latency;
    ctx.warm(&direct.url, lat)?;
    let d = ctx.load(&direct.url, lat)?;
    let d = s.measured(format!("classic cat, direct watchdog, {}", shape(lat)), d);
    ctx.warm(&proxy.url, lat)?;
    let b = ctx.load(&proxy.url, lat)?;
    let b = s.measured(
        format!("classic cat, bare proxy + watchdog, {}", shape(lat)),
        b,
    );
    ctx.warm(&via_gateway, lat)?;
    let g = ctx.load(&via_gateway, lat)?;
    let g = s.measured(format!("classic cat, gateway, {}", shape(lat)), g);
    samples.extend(fork_exec(n - n / 2)?);
    let fork = Stats::from_samples(&mut samples).context("no fork/exec iterations")?;
    let fork = s.measured(
        format!("bare fork/exec of cat, {n} iterations in-process"),
        fork,
    );
    report(s, &g, &d, &b, &fork);
    Ok(())
}

/// A standalone serializing `cat` watchdog, and the bare proxy in front of it; both answering.
fn start_direct(ctx: &Ctx, work: &Path) -> Result<(Server, Server)> {
    let env = [("fprocess", "cat"), ("mode", "serializing")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let direct = Server::start(&ctx.bins, &env, work, &work.join("watchdog-cat.log"))?;
    wait_ok(&direct.url, BODY, Duration::from_secs(30))?;
    let proxy = Server::bare_proxy(&ctx.bins, &direct.url, &work.join("bare-proxy.log"))?;
    wait_ok(&proxy.url, BODY, Duration::from_secs(30))?;
    Ok((direct, proxy))
}

/// The figures from the gateway (`g`), direct watchdog (`d`), bare proxy (`b`) and fork/exec
/// series.
fn report(s: &mut Section, g: &Stats, d: &Stats, b: &Stats, fork: &Stats) {
    let fig =
        |name: &str, value_label: &str, value: f64, baseline_label: &str, baseline: f64, target| {
            Figure {
                name: name.into(),
                value_label: value_label.into(),
                value,
                baseline_label: baseline_label.into(),
                baseline,
                unit: Unit::Micros,
                target,
            }
        };
    let (gw, wd, fe) = ("gateway", "direct watchdog", "fork/exec");
    s.figure(fig(
        "classic cat: p50 latency",
        gw,
        g.p50_us,
        fe,
        fork.p50_us,
        Target::RatioAtMost(1.2),
    ));
    s.figure(fig(
        "classic cat: mean latency",
        gw,
        g.mean_us,
        fe,
        fork.mean_us,
        Target::None,
    ));
    s.figure(fig(
        "classic cat: p99 latency",
        gw,
        g.p99_us,
        fe,
        fork.p99_us,
        Target::None,
    ));
    s.figure(fig(
        "classic cat: p50, watchdog only",
        wd,
        d.p50_us,
        fe,
        fork.p50_us,
        Target::None,
    ));
    s.figure(fig(
        "classic cat: p50, gateway's share",
        gw,
        g.p50_us,
        wd,
        d.p50_us,
        Target::None,
    ));
    s.figure(fig(
        "classic cat: p50, any proxy hop (floor)",
        "bare proxy",
        b.p50_us,
        fe,
        fork.p50_us,
        Target::None,
    ));
    s.figure(fig(
        "classic cat: p50, gateway beyond the bare hop",
        gw,
        g.p50_us,
        "bare proxy",
        b.p50_us,
        Target::None,
    ));
}

/// Times `n` bare fork/exec round trips of `cat` (after a short warm-up), in µs.
fn fork_exec(n: usize) -> Result<Vec<f64>> {
    let cat = which("cat")?;
    let once = || -> Result<f64> {
        let start = Instant::now();
        let mut child = Command::new(&cat)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn cat")?;
        let mut stdin = child.stdin.take().context("cat has no stdin")?;
        stdin.write_all(BODY.as_bytes()).context("write to cat")?;
        drop(stdin);
        let mut out = Vec::with_capacity(BODY.len());
        child
            .stdout
            .take()
            .context("cat has no stdout")?
            .read_to_end(&mut out)
            .context("read from cat")?;
        let status = child.wait().context("wait for cat")?;
        let us = start.elapsed().as_secs_f64() * 1e6;
        if !status.success() || out != BODY.as_bytes() {
            bail!("cat failed ({status}) or answered {out:?}");
        }
        Ok(us)
    };
    for _ in 0..n.min(50) {
        once()?;
    }
    (0..n).map(|_| once()).collect()
}

/// The absolute path of `program` on PATH (so the loop does not search PATH each time).
fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} not found on PATH"))
}
