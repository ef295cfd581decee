//! Starting one watchdog (an instance or a pooled runtime) until it says it is ready: the
//! command comes from [`Launch`] (a process or a sandbox), the listening address from the
//! watchdog's first stdout line, readiness from its ready line (pushed, never polled). Every
//! other line it writes goes to the platform log, under a target a pooled runtime can switch
//! when it is handed to a function.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;

use crate::launch::Launch;
use crate::spec::InstanceSpec;
use crate::ProviderConfig;

/// Prefix of the line the watchdog prints once bound.
const LISTENING: &str = "virga-watchdog listening on ";
/// The line the watchdog prints the moment its function can serve (readiness is pushed).
const READY: &str = "virga-watchdog ready";
/// A started, ready instance: its process, sandbox and address, and where its output goes.
pub(crate) struct Booted {
    pub(crate) id: String,
    pub(crate) child: Child,
    pub(crate) launch: Launch,
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

/// Start `spec`'s watchdog as instance `id` (its runtime forked by `zygote` if given) and
/// wait until it says it is ready.
pub(crate) async fn boot(
    cfg: &ProviderConfig,
    spec: &Arc<InstanceSpec>,
    id: &str,
    zygote: Option<std::path::PathBuf>,
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
    let (launch, mut cmd) = Launch::prepare(cfg, spec, id, zygote.as_deref(), &extra).await?;
    let prepared = t0.elapsed();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cfg.watchdog.display()))?;
    let spawned = t0.elapsed();
    let target = LogTarget::new(cfg.logs.function(&spec.name), id);
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_log(target.clone(), err));
    }
    let stdout = child.stdout.take().ok_or("watchdog stdout not captured")?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = async {
        let printed = read_until(&target, &mut lines, LISTENING).await?;
        let listening = t0.elapsed();
        let addr: SocketAddr = printed
            .trim()
            .parse()
            .map_err(|e| format!("bad address {printed:?}: {e}"))?;
        read_until(&target, &mut lines, READY).await?;
        tracing::debug!(
            instance = %id,
            ?prepared,
            ?spawned,
            ?listening,
            ready = ?t0.elapsed(),
            "instance started"
        );
        Ok::<_, String>(launch.reach(addr))
    };
    let addr = match tokio::time::timeout(cfg.ready_timeout, ready).await {
        Ok(Ok(addr)) => addr,
        Ok(Err(e)) => {
            terminate(&mut child).await;
            return Err(e);
        }
        Err(_) => {
            terminate(&mut child).await;
            return Err(format!("not ready after {:?}", cfg.ready_timeout));
        }
    };
    tokio::spawn(forward_log(target.clone(), lines.into_inner()));
    Ok(Booted {
        id: id.to_string(),
        child,
        launch,
        addr,
        log: target,
        bind_token,
    })
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
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
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

/// SIGTERM the process group, then SIGKILL it if it has not exited in time.
pub(crate) async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        signal_group(pid, libc::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(3), child.wait())
            .await
            .is_err()
        {
            signal_group(pid, libc::SIGKILL);
        }
    }
    let _ = child.wait().await;
}

fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's process group; errors (already gone) are harmless.
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

/// Wait until none of `pids` exists any more, at most `limit`.
pub(crate) async fn wait_gone(pids: &[u32], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        // SAFETY: signal 0 only checks existence.
        let alive = pids
            .iter()
            .any(|&p| unsafe { libc::kill(p as libc::pid_t, 0) } == 0);
        if !alive {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for &p in pids {
        signal_group(p, libc::SIGKILL);
    }
}
