//! Lambda figures: the per-invocation cost of the watchdog's `mode=lambda` (Runtime API,
//! function-URL event) against `mode=http` for the same trivial Python handler, and the cold
//! start of a python3-lambda function (the real awslambdaric) from zero replicas.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::scaling::{children, cold_starts, platform_pid, python_pass, scale, stats};
use super::{shape, Ctx, BODY};
use crate::platform::Platform;
use crate::report::{Figure, Section, Target, Unit};
use crate::runner::{wait_ok, Stats};

/// Name for `--only`.
pub const NAME: &str = "lambda";

/// Section heading.
pub const TITLE: &str = "Lambda: Runtime API overhead and cold start";

/// What the figures mean.
pub const ABOUT: &str = "\
The same trivial handler (answer status 200, body `ok`) is deployed twice with `virga new` + \
`virga deploy` on a fresh `virga up` (warm pool off; one instance each): as a python3-http \
function (`mode=http`, the template's `index.py` server) and as a python3-lambda function \
(`mode=lambda`: the watchdog serves the Runtime API and turns each HTTP call into a \
function-URL event; the runtime is the real `awslambdaric` from PyPI). Both are called one \
request at a time through the gateway (`wrk -t1 -c1`); the p50 ratio is the per-invocation \
cost of Lambda mode (target ≤ 1.2×). A third row runs the handler under a minimal Runtime \
API loop (one keep-alive socket, written for this benchmark) instead of awslambdaric, to \
show which share is the watchdog's and which the runtime client's. **Cold start**: the \
python3-lambda function scaled to zero and called once, timed from send to full response \
(watchdog, interpreter, awslambdaric and the handler imported, first event), next to a \
bare `python3 -c pass`; target: within python3-http's no-warm-pool figure (≤ 80 ms p50). \
The same with the warm pool on (the default): a pooled python3-lambda watchdog (sandbox and \
watchdog up, no runtime) is bound to the function, and awslambdaric starts in its code.";

/// python3-http's handler answering `ok`.
const HTTP_HANDLER: &str =
    "def handle(event, context):\n    return {\"statusCode\": 200, \"body\": \"ok\"}\n";

/// The same for python3-lambda.
const LAMBDA_HANDLER: &str =
    "def handler(event, context):\n    return {\"statusCode\": 200, \"body\": \"ok\"}\n";

/// A minimal Runtime API client: one keep-alive socket, just enough HTTP.
const LEAN_RUNTIME: &str = r#"import json, os, socket, sys
sys.path.insert(0, os.environ["LAMBDA_TASK_ROOT"])
from handler import handler
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
s = socket.create_connection((host, int(port)))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
f = s.makefile("rb")
def answer():
    f.readline()
    h = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.partition(b":")
        h[k.strip().lower()] = v.strip()
    return h, f.read(int(h.get(b"content-length", b"0")))
NEXT = b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: x\r\n\r\n"
s.sendall(NEXT)
while True:
    h, body = answer()
    rid = h[b"lambda-runtime-aws-request-id"]
    out = json.dumps(handler(json.loads(body), None)).encode()
    s.sendall(b"POST /2018-06-01/runtime/invocation/" + rid + b"/response HTTP/1.1\r\nHost: x\r\n"
              + b"Content-Length: " + str(len(out)).encode() + b"\r\n\r\n" + out)
    answer()
    s.sendall(NEXT)
"#;

/// Measures and fills the section.
pub fn run(ctx: &Ctx, s: &mut Section) -> Result<()> {
    let work = ctx.dir(NAME)?;
    let mut platform = Platform::start_with(
        &ctx.bins,
        &work,
        &ctx.isolation,
        &[("VIRGA_WARM_POOL", "0")],
    )?;
    let pid = platform_pid(&work.join("data")).context("virga up's pid not found")?;
    eprintln!("lambda: deploying python3-http and python3-lambda (pip installs awslambdaric)");
    platform.deploy_template_with(
        "bench-http",
        "python3-http",
        &[("handler.py", HTTP_HANDLER)],
    )?;
    platform.deploy_template_with(
        "bench-lambda",
        "python3-lambda",
        &[("handler.py", LAMBDA_HANDLER)],
    )?;
    let lean = ctx.dir("lambda/lean")?;
    std::fs::write(lean.join("handler.py"), LAMBDA_HANDLER)?;
    std::fs::write(lean.join("runtime.py"), LEAN_RUNTIME)?;
    platform.deploy_json(&json!({
        "service": "bench-lean",
        "envProcess": format!("/usr/bin/python3 {}", lean.join("runtime.py").display()),
        "envVars": {"mode": "lambda", "LAMBDA_TASK_ROOT": lean},
        "labels": {crate::platform::SCALE_MAX: "1"},
    }))?;
    let mut p50 = |name: &str, label: &str| -> Result<Stats> {
        let url = platform.function_url(name);
        if let Err(e) = wait_ok(&url, BODY, Duration::from_secs(60)) {
            return Err(platform.explain(e));
        }
        let lat = &ctx.settings.latency;
        ctx.warm(&url, lat)?;
        let st = ctx.load(&url, lat)?;
        Ok(s.measured(format!("{label}, {}", shape(lat)), st))
    };
    let http = p50("bench-http", "python3-http handler, mode=http")?;
    let ric = p50(
        "bench-lambda",
        "python3-lambda handler, mode=lambda (awslambdaric)",
    )?;
    let lean = p50(
        "bench-lean",
        "same handler, mode=lambda (minimal runtime loop)",
    )?;
    let per_call = |name: &str, v: &Stats, label: &str, target| Figure {
        name: name.into(),
        value_label: label.into(),
        value: v.p50_us,
        baseline_label: "mode=http".into(),
        baseline: http.p50_us,
        unit: Unit::Micros,
        target,
    };
    s.figure(per_call(
        "per-invocation p50, python3-lambda vs python3-http",
        &ric,
        "awslambdaric",
        Target::RatioAtMost(1.2),
    ));
    s.figure(per_call(
        "per-invocation p50, minimal Runtime API loop vs python3-http",
        &lean,
        "minimal loop",
        Target::None,
    ));
    cold(ctx, s, &platform.url, pid)
}

/// The python3-lambda function's starts from zero next to `python3 -c pass`.
fn cold(ctx: &Ctx, s: &mut Section, url: &str, pid: i32) -> Result<()> {
    let n = if ctx.settings.iterations < 1000 {
        10
    } else {
        30
    };
    scale(url, "bench-http", 0)?;
    scale(url, "bench-lean", 0)?;
    let mut py = python_pass(n)?;
    let mut starts = cold_starts(url, "bench-lambda", n, || {
        Ok(children(pid, "virga-watchdog").is_empty())
    })?;
    let py = s.measured(format!("python3 -c pass, {n} spawns"), stats(&mut py)?);
    let st = s.measured(
        format!("python3-lambda, 0 → first response, {n} calls"),
        stats(&mut starts)?,
    );
    let pooled = pooled_starts(ctx, s, n)?;
    s.figure(Figure {
        name: "cold start p50, python3-lambda, warm pool".into(),
        value_label: "0 → first response".into(),
        value: pooled.p50_us,
        baseline_label: "python3 -c pass".into(),
        baseline: py.p50_us,
        unit: Unit::Micros,
        target: Target::None,
    });
    s.figure(Figure {
        name: "cold start p50, python3-lambda (awslambdaric), no warm pool".into(),
        value_label: "0 → first response".into(),
        value: st.p50_us,
        baseline_label: "python3 -c pass".into(),
        baseline: py.p50_us,
        unit: Unit::Micros,
        target: Target::AtMost(80_000.0),
    });
    Ok(())
}

/// Starts from zero of the python3-lambda function on a platform with the warm pool on, each
/// once a pooled python3-lambda watchdog is ready (the bind starts awslambdaric in the
/// function's code).
fn pooled_starts(ctx: &Ctx, s: &mut Section, n: usize) -> Result<Stats> {
    let work = ctx.dir("lambda-pooled")?;
    let mut platform = Platform::start(&ctx.bins, &work, &ctx.isolation)?;
    platform.deploy_template_with(
        "bench-lambda",
        "python3-lambda",
        &[("handler.py", LAMBDA_HANDLER)],
    )?;
    wait_ok(
        &platform.function_url("bench-lambda"),
        BODY,
        Duration::from_secs(60),
    )?;
    let mut out = cold_starts(&platform.url, "bench-lambda", n, || {
        let idle = platform.metric("virga_warm_pool_instances{function_name=\"python3-lambda-")?;
        Ok(idle.unwrap_or(0.0) >= 2.0)
    })?;
    Ok(s.measured(
        format!("python3-lambda, 0 → first response, {n} calls (warm pool)"),
        stats(&mut out)?,
    ))
}
