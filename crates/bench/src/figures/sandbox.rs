//! Sandbox start: how long a runc sandbox takes from creation to serving its first request,
//! for a classic `cat` function and for the python3-http template, next to what no sandbox
//! can beat, measured in the same run: a bare `runc run` of an empty container (`true` on a
//! read-only root with /usr) and a bare `python3 -c pass`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::{Ctx, BODY};
use crate::platform::{Platform, ADMIN_PASSWORD};
use crate::report::{Figure, Section, Target, Unit};
use crate::runner::Stats;

/// Name for `--only`.
pub const NAME: &str = "sandbox";

/// Section heading.
pub const TITLE: &str = "Sandbox start (runc) vs bare runc and bare python3";

/// What the figures mean.
pub const ABOUT: &str = "\
`virga up --isolation runc`. A function with `com.openfaas.scale.min: 0` is scaled to zero \
by hand (`POST /system/scale-function`, replicas 0) and, once no instance is left, called \
once: the call's latency is the instance start — sandbox created (network namespace, \
config.json, cgroups), `runc run`, watchdog up, function ready — plus one small request. \
The python3-http start is measured again with the warm pool on (the default): a \
pre-started sandbox is bound to the function (read-only code and secrets mounts \
propagated in, cgroup limits written, one bind call to the runtime). \
Every start, sandboxed or bare, is timed after a 0.5 s pause, so both begin from idle CPUs \
(back-to-back starts on this VM are over 10 ms faster because the CPUs are still awake). \
Baselines timed in the same run: a bare `runc run` of an empty container (`/usr/bin/true` \
on a read-only root with /usr bind-mounted, runc's default namespaces; until it exits) and \
a bare `python3 -c pass`. Targets: the `cat` sandbox ≤ bare runc + 10 ms; the python3-http \
hello from zero to its first response ≤ 80 ms p50 without the warm pool (there is no \
zygote in sandboxes) and ≤ 10 ms p50, ≤ 30 ms p99 with it.";

/// Measures the sandbox starts and their baselines and fills the section.
pub fn run(ctx: &Ctx, s: &mut Section) -> Result<()> {
    let rounds = if ctx.settings.iterations < 1000 {
        5
    } else {
        20
    };
    let http = reqwest::blocking::Client::new();
    let cold = cold_series(ctx, s, &http, rounds)?;
    let warm = warm_series(ctx, s, &http, &cold.image, rounds)?;
    let python = python_baseline(rounds * 2)?;
    let python = s.measured(format!("bare python3 -c pass, {} runs", rounds * 2), python);
    report(s, &cold, &warm, &python);
    Ok(())
}

/// The series measured without the warm pool.
struct Cold {
    /// The python3-http function's image, for the pooled platform.
    image: String,
    bare_runc: Stats,
    cat: Stats,
    py: Stats,
}

/// Bare runc, and the `cat` and python3-http sandbox starts without the warm pool.
fn cold_series(
    ctx: &Ctx,
    s: &mut Section,
    http: &reqwest::blocking::Client,
    rounds: usize,
) -> Result<Cold> {
    let work = ctx.dir(NAME)?;
    let mut platform = Platform::start_with(&ctx.bins, &work, "runc", &[("VIRGA_WARM_POOL", "0")])?;
    platform.deploy_json(&json!({
        "service": "sb-cat", "envProcess": "cat",
        "labels": {"com.openfaas.scale.min": "0"}
    }))?;
    platform.deploy_template("sb-py-src", "python3-http")?;
    let image = function(http, &platform.url, "sb-py-src")?["image"]
        .as_str()
        .context("no image for sb-py-src")?
        .to_string();
    platform.deploy_json(&json!({
        "service": "sb-py", "image": image,
        "labels": {"com.openfaas.scale.min": "0"}
    }))?;

    let rootfs = work.join("data/sandbox/rootfs");
    let bare_runc = runc_baseline(&work, &rootfs, rounds)?;
    let bare_runc = s.measured(
        format!("bare runc run of an empty container, {rounds} runs"),
        bare_runc,
    );
    let cat = cold_starts(http, &platform, "sb-cat", rounds, false)?;
    let cat = s.measured(
        format!("cat sandbox start to first answer, {rounds} starts"),
        cat,
    );
    let py = cold_starts(http, &platform, "sb-py", rounds, false)?;
    let py = s.measured(
        format!("python3-http sandbox start to first answer, {rounds} starts"),
        py,
    );
    Ok(Cold {
        image,
        bare_runc,
        cat,
        py,
    })
}

/// The python3-http start with the warm pool: a pre-started sandbox is bound to the function.
fn warm_series(
    ctx: &Ctx,
    s: &mut Section,
    http: &reqwest::blocking::Client,
    image: &str,
    rounds: usize,
) -> Result<Stats> {
    let pooled_work = ctx.dir("sandbox-pool")?;
    let mut pooled = Platform::start(&ctx.bins, &pooled_work, "runc")?;
    // Uploads the same bundle to this platform's store.
    pooled.deploy_template("sb-py-src", "python3-http")?;
    pooled.deploy_json(&json!({
        "service": "sb-py", "image": image,
        "labels": {"com.openfaas.scale.min": "0"}
    }))?;
    let warm = cold_starts(http, &pooled, "sb-py", rounds, true)?;
    Ok(s.measured(
        format!("python3-http pooled sandbox bound to first answer, {rounds} starts"),
        warm,
    ))
}

/// The section's figures from the measured series.
fn report(s: &mut Section, cold: &Cold, warm: &Stats, python: &Stats) {
    let (bare_runc, cat, py) = (&cold.bare_runc, &cold.cat, &cold.py);
    let fig = |name: &str, value: f64, label: &str, baseline: f64, target| Figure {
        name: name.into(),
        value_label: "sandbox".into(),
        value,
        baseline_label: label.into(),
        baseline,
        unit: Unit::Micros,
        target,
    };
    s.figure(fig(
        "cat sandbox start, p50",
        cat.p50_us,
        "bare runc",
        bare_runc.p50_us,
        Target::AddedAtMost(10_000.0),
    ));
    s.figure(fig(
        "cat sandbox start, p99",
        cat.p99_us,
        "bare runc",
        bare_runc.p99_us,
        Target::None,
    ));
    s.figure(fig(
        "python3-http sandbox start, p50",
        py.p50_us,
        "bare runc",
        bare_runc.p50_us,
        Target::None,
    ));
    s.figure(fig(
        "python3-http sandbox start, p99",
        py.p99_us,
        "bare runc",
        bare_runc.p99_us,
        Target::None,
    ));
    s.figure(fig(
        "python3-http sandbox start (no warm pool), p50",
        py.p50_us,
        "python3 -c pass",
        python.p50_us,
        Target::AtMost(80_000.0),
    ));
    s.figure(fig(
        "python3-http warm-pool sandbox start, p50",
        warm.p50_us,
        "python3 -c pass",
        python.p50_us,
        Target::AtMost(10_000.0),
    ));
    s.figure(fig(
        "python3-http warm-pool sandbox start, p99",
        warm.p99_us,
        "python3 -c pass",
        python.p99_us,
        Target::AtMost(30_000.0),
    ));
}

fn function(http: &reqwest::blocking::Client, url: &str, name: &str) -> Result<Value> {
    let r = http
        .get(format!("{url}/system/function/{name}"))
        .basic_auth("admin", Some(ADMIN_PASSWORD))
        .send()?;
    if !r.status().is_success() {
        bail!("GET /system/function/{name}: {}", r.status());
    }
    Ok(r.json()?)
}

/// Scale `name` to zero, wait until no instance is left (and, with `pool`, until the warm
/// pool is full), then time one call; `rounds` times.
pub(super) fn cold_starts(
    http: &reqwest::blocking::Client,
    platform: &Platform,
    name: &str,
    rounds: usize,
    pool: bool,
) -> Result<Stats> {
    let mut samples = Vec::with_capacity(rounds);
    // One call first, so the function's files are in the page cache like a warm host's.
    for round in 0..=rounds {
        let r = http
            .post(format!("{}/system/scale-function/{name}", platform.url))
            .basic_auth("admin", Some(ADMIN_PASSWORD))
            .json(&json!({"serviceName": name, "replicas": 0}))
            .send()?;
        if !r.status().is_success() {
            bail!("scale {name} to 0: {}", r.status());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let f = function(http, &platform.url, name)?;
            let refilled = !pool || platform.python_pool_idle()? >= 2.0;
            if f["availableReplicas"] == 0 && f["replicas"] == 0 && refilled {
                break;
            }
            if Instant::now() > deadline {
                bail!("{name} did not scale to zero: {f}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the stopped instance's sandbox be torn down so it does not compete, and start
        // from an idle machine like the baselines do.
        std::thread::sleep(IDLE_GAP);
        let started = Instant::now();
        let r = http.post(platform.function_url(name)).body(BODY).send()?;
        let took = started.elapsed();
        if !r.status().is_success() {
            bail!("{name} from zero answered {}: {}", r.status(), r.text()?);
        }
        if round > 0 {
            samples.push(took.as_secs_f64() * 1e6);
        }
    }
    Stats::from_samples(&mut samples).context("no cold starts")
}

/// `runc run` of `/usr/bin/true` in a bundle on the platform's read-only root skeleton.
fn runc_baseline(work: &Path, rootfs: &Path, rounds: usize) -> Result<Stats> {
    runc_run(work, rootfs, "/usr/bin/true", true, rounds)
}

/// `runc run` of `program` (until it exits) on the read-only `rootfs`, with the host's /usr
/// bind-mounted when `host_usr`, runc's default namespaces.
pub(super) fn runc_run(
    work: &Path,
    rootfs: &Path,
    program: &str,
    host_usr: bool,
    rounds: usize,
) -> Result<Stats> {
    let bundle = work.join("bare-runc");
    std::fs::create_dir_all(&bundle)?;
    let _ = std::fs::remove_file(bundle.join("config.json"));
    let out = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .output()
        .context("run `runc spec` (is runc installed? scripts/setup)")?;
    if !out.status.success() {
        bail!("runc spec: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!([program]);
    spec["root"] = json!({"path": rootfs, "readonly": true});
    if let Some(mounts) = spec["mounts"].as_array_mut().filter(|_| host_usr) {
        mounts.push(json!({
            "destination": "/usr", "type": "bind", "source": "/usr",
            "options": ["bind", "ro", "nosuid", "nodev"]
        }));
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    let state = work.join("bare-runc-state");
    timed_runs(rounds, |i| {
        let mut cmd = Command::new("runc");
        cmd.arg("--root")
            .arg(&state)
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("virga-bench-bare-{}-{i}", std::process::id()))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    })
}

fn python_baseline(rounds: usize) -> Result<Stats> {
    timed_runs(rounds, |_| {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-c", "pass"]);
        cmd
    })
}

/// Pause before every timed start, sandboxed or bare. Starting right after the previous
/// one finds the CPUs awake; after a pause (as a real cold start, after an idle period) the
/// many process hand-offs of `runc run` each wait for an idle CPU to wake, which on this kind
/// of VM adds over 10 ms. Both sides are measured the same way.
const IDLE_GAP: Duration = Duration::from_millis(500);

/// Run the command `make(i)` gives `rounds` + 1 times (the first warms caches and is not
/// counted), each after [`IDLE_GAP`], and time each run to its exit.
fn timed_runs(rounds: usize, mut make: impl FnMut(usize) -> Command) -> Result<Stats> {
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..=rounds {
        std::thread::sleep(IDLE_GAP);
        let mut cmd = make(i);
        let started = Instant::now();
        let status = cmd
            .status()
            .with_context(|| format!("run {:?}", cmd.get_program()))?;
        if !status.success() {
            bail!("{:?} failed: {status}", cmd.get_program());
        }
        if i > 0 {
            samples.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    Stats::from_samples(&mut samples).context("no runs")
}
