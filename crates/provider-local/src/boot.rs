//! Starting one instance (a function's, or a pooled runtime) until it says it is ready: the
//! isolation starts it, the listening address comes from the watchdog's first stdout line,
//! readiness from its ready line (pushed, never polled). Every other line it writes goes to
//! the platform log, under a target a pooled runtime can switch when it is handed to a
//! function.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::config::Ctx;
use crate::isolation::{Handle, Life, Output, Start, Started};
use crate::probe;
use crate::spec::{InstanceSpec, Rootfs};

/// Prefix of the line the watchdog prints once bound.
const LISTENING: &str = "virga-watchdog listening on ";
/// The line the watchdog prints the moment its function can serve (readiness is pushed).
const READY: &str = "virga-watchdog ready";

/// A started, ready instance: its life, handle and address, and where its output goes.
pub(crate) struct Booted {
    pub(crate) id: String,
    /// Declared before `handle`: the instance ends before what it runs in is removed.
    pub(crate) life: Box<dyn Life>,
    pub(crate) handle: Arc<dyn Handle>,
    pub(crate) addr: SocketAddr,
    pub(crate) log: LogTarget,
    /// The secret a pooled runtime wants with its bind (`None` for a function's own start).
    pub(crate) bind_token: Option<String>,
}

impl Booted {
    /// Attribute further output to `log` under instance id `id`.
    pub(crate) fn log_as(&self, log: Arc<virga_logs::FunctionLog>, id: &str) {
        self.log.set(log, id);
    }
}

/// Start `spec`'s instance `id` (its runtime forked by `zygote` if given) and wait until it
/// says it is ready.
pub(crate) async fn boot(
    ctx: &Ctx,
    spec: &Arc<InstanceSpec>,
    id: &str,
    zygote: Option<PathBuf>,
) -> Result<Booted, String> {
    let t0 = std::time::Instant::now();
    let bind_token = spec.unbound.then(new_token);
    // The instance's name is its host name, as a pod's is in OpenFaaS.
    let mut extra = vec![("HOSTNAME".to_string(), id.to_string())];
    extra.extend(
        bind_token
            .iter()
            .map(|t| (BIND_TOKEN_ENV.to_string(), t.clone())),
    );
    let start = Start {
        spec: spec.clone(),
        id: id.to_string(),
        extra,
        zygote,
    };
    let Started {
        mut life,
        handle,
        stdout,
        stderr,
    } = ctx.isolation.clone().start(start).await?;
    let started = t0.elapsed();
    let target = LogTarget::new(ctx.cfg.logs.function(&spec.name), id);
    if let Some(err) = stderr {
        tokio::spawn(forward_log(target.clone(), err));
    }
    let timeout = ctx.cfg.ready_timeout;
    let ready = match &spec.rootfs {
        Rootfs::Image(image) if !image.lambda => {
            // No Virga watchdog to say so: probe the port the image listens on.
            tokio::spawn(forward_log(target.clone(), stdout));
            let addr = handle.reach(SocketAddr::from(([0, 0, 0, 0], image.port)));
            let probe = probe::until_ready(addr, life.as_mut());
            tokio::time::timeout(timeout, probe)
                .await
                .map(|r| r.map(|()| addr))
        }
        // The platform's watchdog (a Lambda image's too) says when its runtime is ready.
        _ => {
            let said = watchdog_ready(&target, stdout, handle.as_ref());
            tokio::time::timeout(timeout, said).await
        }
    };
    let addr = match ready {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => {
            life.stop().await;
            return Err(e);
        }
        Err(_) => {
            life.stop().await;
            return Err(format!("not ready after {timeout:?}"));
        }
    };
    tracing::debug!(instance = %id, ?started, ready = ?t0.elapsed(), "instance started");
    Ok(Booted {
        id: id.to_string(),
        life,
        handle,
        addr,
        log: target,
        bind_token,
    })
}

/// Read the watchdog's listening and ready lines (logging the others); where to reach it.
/// Its later output goes to the log.
async fn watchdog_ready(
    target: &LogTarget,
    stdout: Output,
    handle: &dyn Handle,
) -> Result<SocketAddr, String> {
    let mut lines = BufReader::new(stdout).lines();
    let printed = read_until(target, &mut lines, LISTENING).await?;
    let addr: SocketAddr = printed
        .trim()
        .parse()
        .map_err(|e| format!("bad address {printed:?}: {e}"))?;
    read_until(target, &mut lines, READY).await?;
    tokio::spawn(forward_log(target.clone(), lines.into_inner()));
    Ok(handle.reach(addr))
}

/// Where a pooled runtime finds its bind token (it takes it out of its environment before
/// any function code runs).
const BIND_TOKEN_ENV: &str = "VIRGA_BIND_TOKEN";

/// 256 random bits, hex: a pooled runtime's bind token.
fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Where an instance's output lines go: its function's log under its id. Switchable, because
/// a pooled instance starts under the pool's name and is handed to a function later.
#[derive(Clone)]
pub(crate) struct LogTarget(Arc<Mutex<(Arc<virga_logs::FunctionLog>, String)>>);

impl LogTarget {
    /// Lines go to `log` under instance id `id`.
    pub(crate) fn new(log: Arc<virga_logs::FunctionLog>, id: &str) -> LogTarget {
        LogTarget(Arc::new(Mutex::new((log, id.to_string()))))
    }

    /// Send further lines to `log` under instance id `id`.
    pub(crate) fn set(&self, log: Arc<virga_logs::FunctionLog>, id: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = (log, id.to_string());
    }

    fn push(&self, line: &str) {
        let (log, id) = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        tracing::debug!(target: "function", function = %log.name(), instance = %id, "{line}");
        log.push(&id, line);
    }
}

/// Read stdout lines (logging the others) until one starts with `prefix`; returns the rest of it.
async fn read_until(
    log: &LogTarget,
    lines: &mut tokio::io::Lines<BufReader<Output>>,
    prefix: &str,
) -> Result<String, String> {
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(rest) = line.strip_prefix(prefix) {
            return Ok(rest.to_string());
        }
        log.push(&line);
    }
    Err(format!("watchdog exited before printing {prefix:?}"))
}

/// Push every line of `r` into the log (read as bytes: bad UTF-8 cannot stop it).
pub(crate) async fn forward_log<R: AsyncRead + Unpin>(log: LogTarget, r: R) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    while matches!(r.read_until(b'\n', &mut buf).await, Ok(n) if n > 0) {
        let text = String::from_utf8_lossy(&buf);
        log.push(text.trim_end_matches(['\n', '\r']));
        buf.clear();
    }
}
