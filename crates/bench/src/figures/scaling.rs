//! Scaling figures: cold start of the python3-http and node hello functions from zero replicas
//! to their first response (next to a bare `python3 -c pass` or `node -e 0` measured in the
//! same run), the time from a load step to an extra replica serving, and the platform's idle
//! memory with 100 functions at zero plus the memory of one running instance.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::blocking::Client;
use serde_json::{json, Value};

use super::{Ctx, BODY};
use crate::platform::{Platform, ADMIN_PASSWORD};
use crate::report::{Figure, Section, Target, Unit};
use crate::runner::{wait_ok, Stats};

/// Name for `--only`.
pub const NAME: &str = "scaling";

/// Section heading.
pub const TITLE: &str = "Scaling: cold starts, load steps and memory at rest";

/// What the figures mean.
pub const ABOUT: &str = "\
**Cold start**: the python3-http hello function (`virga new --lang python3-http`) is scaled \
to 0 replicas with `POST /system/scale-function`, and once its instance is gone one `POST` \
is timed from send to full response: the gateway holds it while an instance starts \
(watchdog, then the Python runtime) and pushes readiness. The baseline is a bare \
`/usr/bin/python3 -c pass` spawned by virga-bench in the same run (`virga up` runs with \
the system PATH, so its runtimes use that python3 too). Measured three times: with the warm pool and \
the zygote off (`VIRGA_WARM_POOL=0 VIRGA_NO_ZYGOTE=true`: watchdog and interpreter start on the \
request path), with only the zygote (`VIRGA_WARM_POOL=0`: the watchdog starts, the runtime \
is forked from a pre-forked interpreter; target ≤ 80 ms p50 without the warm pool), and with \
the warm pool (the default: a pre-started runtime is bound to the function; each call is \
made once the pool has refilled; targets ≤ 10 ms p50, ≤ 30 ms p99). The node hello \
function is measured the same way without the warm pool, with and without its zygote, next \
to a bare `/usr/bin/node -e 0` (information: the issue sets no node target). \
**Load step**: a `capacity` function with target 1 and target-proportion 1 (`sleep 0.2` per request) at one replica \
gets 6 concurrent callers; timed is the step to the moment `availableReplicas` first \
exceeds 1, against one cold start of that function (target: within 2 s of it). \
**Memory at rest**: resident memory (VmRSS) of `virga up` with 100 deployed functions all \
at zero (target ≤ 30 MiB; the row's baseline is the same platform with no function), and \
of one running python3-http instance (watchdog plus runtime and their descendants). The \
cold-start target is absolute (80 ms); it is shown as information because the baseline \
varies with the machine's load.";

fn client() -> Result<Client> {
    Ok(Client::builder().timeout(Duration::from_secs(60)).build()?)
}

fn sys(
    url: &str,
    method: reqwest::Method,
    path: &str,
) -> Result<reqwest::blocking::RequestBuilder> {
    Ok(client()?
        .request(method, format!("{url}{path}"))
        .basic_auth("admin", Some(ADMIN_PASSWORD)))
}

fn replicas(url: &str, name: &str) -> Result<(u64, u64)> {
    let s: Value = sys(
        url,
        reqwest::Method::GET,
        &format!("/system/function/{name}"),
    )?
    .send()?
    .json()?;
    Ok((
        s["replicas"].as_u64().unwrap_or(0),
        s["availableReplicas"].as_u64().unwrap_or(0),
    ))
}

pub(super) fn scale(url: &str, name: &str, n: u64) -> Result<()> {
    let r = sys(
        url,
        reqwest::Method::POST,
        &format!("/system/scale-function/{name}"),
    )?
    .json(&json!({"serviceName": name, "replicas": n}))
    .send()?;
    if !r.status().is_success() {
        bail!("scale {name} to {n}: HTTP {}", r.status());
    }
    Ok(())
}

fn until(limit: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("condition not reached within {limit:?}")
}

/// Pid of the `virga up` whose data directory is `data`.
pub(super) fn platform_pid(data: &Path) -> Option<i32> {
    let needle = data.to_string_lossy().into_owned();
    procs().into_iter().find(|&pid| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        cmd.contains(" up ") && cmd.contains(&needle)
    })
}

fn procs() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// VmRSS of `pid` in MiB.
fn rss_mib(pid: i32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Children of `parent` (direct) named `comm`.
pub(super) fn children(parent: i32, comm: &str) -> Vec<i32> {
    procs()
        .into_iter()
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok());
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            ppid == Some(parent) && name.trim() == comm
        })
        .collect()
}

/// Summed VmRSS of `root` and all its descendants, in MiB.
fn tree_rss_mib(root: i32) -> f64 {
    let parent_of = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')?
                    .1
                    .split_whitespace()
                    .nth(1)?
                    .parse::<i32>()
                    .ok()
            })
    };
    let all = procs();
    let mut tree = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for &p in &all {
            if !tree.contains(&p) && parent_of(p).is_some_and(|pp| tree.contains(&pp)) {
                tree.push(p);
                grew = true;
            }
        }
    }
    tree.into_iter().map(rss_mib).sum()
}

/// Spawn `/usr/bin/python3 -c pass` `n` times, in microseconds each.
pub(super) fn python_pass(n: usize) -> Result<Vec<f64>> {
    spawn_times("/usr/bin/python3", &["-c", "pass"], n)
}

/// Spawn `program args` `n` times (waiting for each), in microseconds each.
fn spawn_times(program: &str, args: &[&str], n: usize) -> Result<Vec<f64>> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            let st = Command::new(program).args(args).status()?;
            if !st.success() {
                bail!("{program} {args:?} failed: {st}");
            }
            Ok(t.elapsed().as_secs_f64() * 1e6)
        })
        .collect()
}

/// Time `n` calls each made at zero replicas once `settled` holds, in microseconds.
pub(super) fn cold_starts(
    url: &str,
    name: &str,
    n: usize,
    mut settled: impl FnMut() -> Result<bool>,
) -> Result<Vec<f64>> {
    let http = client()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        scale(url, name, 0)?;
        until(Duration::from_secs(30), || {
            Ok(replicas(url, name)? == (0, 0) && settled()?)
        })?;
        let t = Instant::now();
        let r = http
            .post(format!("{url}/function/{name}"))
            .body(BODY)
            .send()?;
        let status = r.status();
        let _ = r.bytes()?;
        if !status.is_success() {
            bail!("cold call of {name} answered {status}");
        }
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// Microseconds from a 6-caller load step to a second ready replica, `runs` times.
fn load_steps(url: &str, name: &str, runs: usize) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..runs {
        scale(url, name, 1)?;
        until(Duration::from_secs(20), || {
            Ok(replicas(url, name)? == (1, 1))
        })?;
        // Let the autoscaler's load window forget the previous step.
        std::thread::sleep(Duration::from_millis(1500));
        scale(url, name, 1)?;
        until(Duration::from_secs(20), || {
            Ok(replicas(url, name)? == (1, 1))
        })?;
        if replicas(url, name)? != (1, 1) {
            bail!("{name} did not stay at one replica before the load step");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let callers: Vec<_> = (0..6)
            .map(|_| {
                let (stop, target) = (stop.clone(), format!("{url}/function/{name}"));
                std::thread::spawn(move || {
                    let Ok(http) = client() else { return };
                    while !stop.load(Ordering::SeqCst) {
                        let _ = http.post(&target).body(BODY).send().and_then(|r| r.bytes());
                    }
                })
            })
            .collect();
        let t = Instant::now();
        let reached = until(Duration::from_secs(20), || Ok(replicas(url, name)?.1 > 1));
        let took = t.elapsed().as_secs_f64() * 1e6;
        stop.store(true, Ordering::SeqCst);
        for c in callers {
            let _ = c.join();
        }
        reached?;
        out.push(took);
    }
    Ok(out)
}

/// Measures and fills the section.
pub fn run(ctx: &Ctx, s: &mut Section) -> Result<()> {
    let work = ctx.dir(NAME)?;
    let data: PathBuf = work.join("data");
    let mut platform = Platform::start_with(
        &ctx.bins,
        &work,
        &ctx.isolation,
        &[("VIRGA_WARM_POOL", "0"), ("VIRGA_NO_ZYGOTE", "true")],
    )?;
    let pid = platform_pid(&data).context("virga up's pid not found")?;
    std::thread::sleep(Duration::from_millis(500));
    let empty_rss = rss_mib(pid);

    eprintln!("scaling: deploying python3-http hello");
    platform.deploy_template("bench-hello", "python3-http")?;
    if let Err(e) = wait_ok(
        &platform.function_url("bench-hello"),
        BODY,
        Duration::from_secs(60),
    ) {
        return Err(platform.explain(e));
    }
    let quick = ctx.settings.iterations < 1000;
    let starts = start_series(ctx, s, &platform.url, pid, if quick { 10 } else { 40 })?;
    // One running instance's memory.
    let wd = children(pid, "virga-watchdog");
    let instance_rss = wd.first().map_or(0.0, |&w| tree_rss_mib(w));
    let (start_one, steps) = load_step(s, &mut platform, pid, quick)?;
    let (idle_rss, idle_procs) = idle_functions(&mut platform, pid)?;
    report_starts(s, &starts);
    report_platform(
        s,
        &Footprint {
            start_one,
            steps,
            empty_rss,
            idle_rss,
            idle_procs,
            instance_rss,
        },
    );
    Ok(())
}

/// The start series and their baselines.
struct Starts {
    py: Stats,
    cold: Stats,
    forked: Stats,
    warm: Stats,
    node: Stats,
    node_cold: Stats,
    node_forked: Stats,
}

/// The autoscaler's and the platform's memory figures.
struct Footprint {
    start_one: Stats,
    steps: Stats,
    empty_rss: f64,
    idle_rss: f64,
    idle_procs: usize,
    instance_rss: f64,
}

/// Cold starts of the hello functions (python3-http on `url`'s platform, `virga up`'s `pid`,
/// and on fresh platforms per setting) and the bare interpreters' spawns; `n` of each.
fn start_series(ctx: &Ctx, s: &mut Section, url: &str, pid: i32, n: usize) -> Result<Starts> {
    let mut py = python_pass(n / 2)?;
    let mut cold = cold_starts(url, "bench-hello", n, || {
        Ok(children(pid, "virga-watchdog").is_empty())
    })?;
    py.extend(python_pass(n - n / 2)?);
    let py = s.measured(format!("python3 -c pass, {n} spawns"), stats(&mut py)?);
    let cold = s.measured(
        format!("python3-http hello, 0 → first response, {n} calls (no warm pool, no zygote)"),
        stats(&mut cold)?,
    );
    let no_pool = [("VIRGA_WARM_POOL", "0")];
    let neither = [("VIRGA_WARM_POOL", "0"), ("VIRGA_NO_ZYGOTE", "true")];
    let forked = starts_with(ctx, s, n, "python3-http", &no_pool, "zygote, no warm pool")?;
    let warm = starts_with(ctx, s, n, "python3-http", &[], "warm pool")?;
    let mut node = spawn_times("/usr/bin/node", &["-e", "0"], n)?;
    let node = s.measured(format!("node -e 0, {n} spawns"), stats(&mut node)?);
    let node_cold = starts_with(ctx, s, n, "node20", &neither, "no warm pool, no zygote")?;
    let node_forked = starts_with(ctx, s, n, "node20", &no_pool, "zygote, no warm pool")?;
    Ok(Starts {
        py,
        cold,
        forked,
        warm,
        node,
        node_cold,
        node_forked,
    })
}

/// A capacity-scaled function: one cold call's time, and the load step's time to a second
/// replica serving.
fn load_step(
    s: &mut Section,
    platform: &mut Platform,
    pid: i32,
    quick: bool,
) -> Result<(Stats, Stats)> {
    eprintln!("scaling: load step on a capacity function");
    let url = platform.url.clone();
    scale(&url, "bench-hello", 0)?;
    platform.deploy_json(&json!({
        "service": "bench-busy",
        "envProcess": "sleep 0.2",
        "labels": {
            "com.openfaas.scale.type": "capacity",
            "com.openfaas.scale.target": "1",
            "com.openfaas.scale.target-proportion": "1",
            "com.openfaas.scale.max": "4",
        },
    }))?;
    let mut start_one = cold_starts(&url, "bench-busy", 3, || {
        Ok(children(pid, "virga-watchdog").is_empty())
    })?;
    let start_one = stats(&mut start_one)?;
    let mut steps = load_steps(&url, "bench-busy", if quick { 2 } else { 5 })?;
    let steps = s.measured("load step → second replica serving", stats(&mut steps)?);
    Ok((start_one, steps))
}

/// `virga up`'s RSS (MiB) and instance processes with 100 functions deployed, all at zero.
fn idle_functions(platform: &mut Platform, pid: i32) -> Result<(f64, usize)> {
    eprintln!("scaling: 100 functions at zero");
    for i in 0..100 {
        platform.deploy_json(&json!({
            "service": format!("idle-{i}"),
            "envProcess": "cat",
            "labels": {"com.openfaas.scale.min": "0"},
        }))?;
    }
    let url = &platform.url;
    scale(url, "bench-hello", 0)?;
    scale(url, "bench-busy", 0)?;
    until(Duration::from_secs(30), || {
        Ok(children(pid, "virga-watchdog").is_empty())
    })?;
    std::thread::sleep(Duration::from_secs(1));
    Ok((rss_mib(pid), children(pid, "virga-watchdog").len()))
}

/// One figure.
fn fig(name: String, vl: &str, v: f64, bl: &str, b: f64, unit: Unit, target: Target) -> Figure {
    Figure {
        name,
        value_label: vl.into(),
        value: v,
        baseline_label: bl.into(),
        baseline: b,
        unit,
        target,
    }
}

/// The cold-start figures.
fn report_starts(s: &mut Section, st: &Starts) {
    s.figure(fig(
        "cold start p50, python3-http hello, zygote (no warm pool)".into(),
        "0 → first response",
        st.forked.p50_us,
        "python3 -c pass",
        st.py.p50_us,
        Unit::Micros,
        Target::AtMost(80_000.0),
    ));
    s.figure(fig(
        "cold start p50, python3-http hello, no warm pool, no zygote".into(),
        "0 → first response",
        st.cold.p50_us,
        "python3 -c pass",
        st.py.p50_us,
        Unit::Micros,
        Target::AtMost(80_000.0),
    ));
    s.figure(fig(
        "cold start p50, python3-http hello, warm pool".into(),
        "0 → first response",
        st.warm.p50_us,
        "python3 -c pass",
        st.py.p50_us,
        Unit::Micros,
        Target::AtMost(10_000.0),
    ));
    s.figure(fig(
        "cold start p99, python3-http hello, warm pool".into(),
        "0 → first response",
        st.warm.p99_us,
        "python3 -c pass p99",
        st.py.p99_us,
        Unit::Micros,
        Target::AtMost(30_000.0),
    ));
    s.figure(fig(
        "cold start p99, python3-http hello, no warm pool, no zygote".into(),
        "0 → first response",
        st.cold.p99_us,
        "python3 -c pass p99",
        st.py.p99_us,
        Unit::Micros,
        Target::None,
    ));
    s.figure(fig(
        "cold start p50, node hello, zygote (no warm pool)".into(),
        "0 → first response",
        st.node_forked.p50_us,
        "node -e 0",
        st.node.p50_us,
        Unit::Micros,
        Target::None,
    ));
    s.figure(fig(
        "cold start p50, node hello, no warm pool, no zygote".into(),
        "0 → first response",
        st.node_cold.p50_us,
        "node -e 0",
        st.node.p50_us,
        Unit::Micros,
        Target::None,
    ));
}

/// The autoscaler's and memory figures.
fn report_platform(s: &mut Section, sc: &Footprint) {
    s.figure(fig(
        "load step → extra replica serving, p50 (target ≤ 2 s beyond a start)".into(),
        "autoscaler",
        sc.steps.p50_us,
        "one cold call (start + 0.2 s sleep)",
        sc.start_one.p50_us,
        Unit::Micros,
        Target::AddedAtMost(2_000_000.0),
    ));
    s.figure(fig(
        format!(
            "platform RSS, 100 functions at zero ({} instance processes)",
            sc.idle_procs
        ),
        "virga up",
        sc.idle_rss,
        "no functions",
        sc.empty_rss,
        Unit::Mebibytes,
        Target::AddedAtMost(30.0 - sc.empty_rss),
    ));
    s.figure(fig(
        "one running python3-http instance".into(),
        "watchdog + runtime",
        sc.instance_rss,
        "virga up, idle",
        sc.idle_rss,
        Unit::Mebibytes,
        Target::None,
    ));
}

/// Cold starts of `lang`'s hello function on a fresh platform with `env` (warm pool and
/// zygote settings), recorded in `s` as `label`; with the warm pool on, each call waits until
/// the pool is full again, so every start is a pooled one.
fn starts_with(
    ctx: &Ctx,
    s: &mut Section,
    n: usize,
    lang: &str,
    env: &[(&str, &str)],
    label: &str,
) -> Result<Stats> {
    let pooled = !env.contains(&("VIRGA_WARM_POOL", "0"));
    let work = ctx.dir(&format!(
        "scaling-{lang}-{}",
        label.replace([' ', ','], "-")
    ))?;
    let mut platform = Platform::start_with(&ctx.bins, &work, &ctx.isolation, env)?;
    let url = platform.url.clone();
    eprintln!("scaling: {lang} cold starts ({label})");
    platform.deploy_template("bench-start", lang)?;
    wait_ok(
        &platform.function_url("bench-start"),
        BODY,
        Duration::from_secs(60),
    )?;
    let mut out = cold_starts(&url, "bench-start", n, || {
        Ok(!pooled || platform.python_pool_idle()? >= 2.0)
    })?;
    Ok(s.measured(
        format!("{lang} hello, 0 → first response, {n} calls ({label})"),
        stats(&mut out)?,
    ))
}

pub(super) fn stats(samples: &mut [f64]) -> Result<Stats> {
    Stats::from_samples(samples).context("no samples")
}
