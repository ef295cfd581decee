//! Zygotes (only where the isolation allows them: processes): per forkable template runtime (python3-http, node20), a
//! runtime with its libraries loaded that forks a new runtime per start, for the starts the
//! pool cannot serve (and, for python3-http, for refilling the pool). A zygote runs the
//! platform's copy of the template, like pooled runtimes, and holds no function's code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::io::AsyncBufReadExt;
use tokio::process::Child;

use super::runtime::{Installed, PoolKey};
use crate::boot::{forward_log, LogTarget};
use crate::child;
use crate::config::Ctx;
use crate::spec::InstanceSpec;

/// A template runtime that can run as a zygote (`VIRGA_ZYGOTE`).
struct Forkable {
    /// The template.
    lang: &'static str,
    /// Interpreter flags the zygote starts with.
    flags: &'static [&'static str],
    /// Whether the pool refills from the zygote too, not only request-path starts.
    refill: bool,
}

/// The forkable runtimes. Node forks through Virga's addon and runs V8 on its main thread
/// only (fork(2) copies no V8 worker threads, and tasks posted to them would never run), which
/// costs allocation-heavy handlers about a quarter of their throughput: so only starts on the
/// request path are forked, and the pool, off that path, starts full node runtimes.
const FORKABLE: [Forkable; 2] = [
    Forkable {
        lang: "python3-http",
        flags: &[],
        refill: true,
    },
    Forkable {
        lang: "node20",
        flags: &["--single-threaded"],
        refill: false,
    },
];

fn forkable(rt: &Installed) -> Option<&'static Forkable> {
    FORKABLE.iter().find(|f| f.lang == rt.runtime.lang)
}

/// A pre-forked interpreter and the socket it takes requests on.
struct Zygote {
    child: Child,
    socket: PathBuf,
    ready: bool,
}

/// The zygotes of one platform, by runtime.
pub(super) struct Zygotes {
    ctx: Arc<Ctx>,
    /// Whether zygotes run at all: asked for, and allowed by the isolation.
    enabled: bool,
    running: Mutex<HashMap<PoolKey, Zygote>>,
    /// A private directory (0700, under the system's temp dir) for zygote sockets, made when
    /// the run directory's path is too long for a unix socket address.
    short_dir: OnceLock<Option<tempfile::TempDir>>,
}

impl Zygotes {
    pub(super) fn new(ctx: Arc<Ctx>) -> Arc<Zygotes> {
        Arc::new(Zygotes {
            enabled: ctx.cfg.zygote && ctx.isolation.zygotes(),
            ctx,
            running: Mutex::new(HashMap::new()),
            short_dir: OnceLock::new(),
        })
    }

    fn running(&self) -> MutexGuard<'_, HashMap<PoolKey, Zygote>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where `key`'s zygote listens: in the run directory, or in a private short directory
    /// when that path would not fit a unix socket address (108 bytes).
    fn socket_path(&self, key: &PoolKey) -> Option<PathBuf> {
        let name = format!("zygote-{}.sock", key.0);
        let fits = |p: &PathBuf| p.as_os_str().len() <= 100;
        let path = self.ctx.cfg.run_dir.join(&name);
        if fits(&path) {
            return Some(path);
        }
        let dir = self.short_dir.get_or_init(|| {
            tempfile::Builder::new()
                .prefix("virga-")
                .tempdir()
                .map_err(|e| tracing::warn!("no directory for zygote sockets: {e}"))
                .ok()
        });
        dir.as_ref().map(|d| d.path().join(name)).filter(fits)
    }

    /// The socket of `rt`'s zygote for a pool refill, when that runtime refills from it.
    pub(super) fn for_refill(self: &Arc<Self>, rt: &Arc<Installed>) -> Option<PathBuf> {
        forkable(rt).filter(|f| f.refill)?;
        self.socket(rt)
    }

    /// The socket of `rt`'s zygote, when one is running and ready. A zygote found dead is
    /// replaced for the starts after this one if it had been ready (one that died before is
    /// not: it would only die again; starts go without it).
    pub(super) fn socket(self: &Arc<Self>, rt: &Arc<Installed>) -> Option<PathBuf> {
        let mut running = self.running();
        let z = running.get_mut(&rt.key)?;
        if matches!(z.child.try_wait(), Ok(None)) {
            return z.ready.then(|| z.socket.clone());
        }
        let had_served = z.ready;
        running.remove(&rt.key);
        drop(running);
        if had_served {
            tracing::warn!("zygote {} exited; starting a new one", rt.key.0);
            self.ensure(rt);
        } else {
            tracing::warn!(
                "zygote {} exited before it was ready; starts go without it",
                rt.key.0
            );
        }
        None
    }

    /// Start `rt`'s zygote if zygotes are on, its runtime can fork (python3-http, node20)
    /// and none runs.
    pub(super) fn ensure(self: &Arc<Self>, rt: &Arc<Installed>) {
        if !self.enabled {
            return;
        }
        let Some(Forkable { lang, flags, .. }) = forkable(rt) else {
            return;
        };
        let addon = match (*lang, &self.ctx.cfg.node_addon) {
            ("node20", None) => return,
            ("node20", Some(addon)) => Some(addon.as_path()),
            _ => None,
        };
        let Some(socket) = self.socket_path(&rt.key) else {
            return;
        };
        let mut running = self.running();
        if let Some(z) = running.get_mut(&rt.key) {
            if matches!(z.child.try_wait(), Ok(None)) {
                return;
            }
        }
        match start(&self.ctx.cfg.logs, &rt.generic, &socket, flags, addon) {
            Ok((child, stdout)) => {
                running.insert(
                    rt.key.clone(),
                    Zygote {
                        child,
                        socket,
                        ready: false,
                    },
                );
                let (zygotes, key) = (self.clone(), rt.key.clone());
                tokio::spawn(async move { zygotes.await_ready(key, stdout).await });
            }
            Err(e) => tracing::warn!("zygote {}: {e}", rt.key.0),
        }
    }

    /// Mark `key`'s zygote ready once it prints so.
    async fn await_ready(&self, key: PoolKey, stdout: tokio::process::ChildStdout) {
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(self.ctx.cfg.ready_timeout, lines.next_line()).await;
        if matches!(ready, Ok(Ok(Some(ref l))) if l == "virga-zygote ready") {
            if let Some(z) = self.running().get_mut(&key) {
                z.ready = true;
            }
        } else {
            tracing::warn!("zygote {}: not ready ({ready:?})", key.0);
        }
    }

    /// Stop every zygote; returns their pids to wait for.
    pub(super) fn clear(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for (_, mut z) in self.running().drain() {
            pids.extend(z.child.id());
            let _ = z.child.start_kill();
        }
        pids
    }
}

/// Start the zygote of the runtime `generic` describes, listening on `socket`: its program
/// with the interpreter `flags`, and node's fork `addon` when it needs one.
fn start(
    logs: &virga_logs::LogHub,
    generic: &InstanceSpec,
    socket: &Path,
    flags: &[&str],
    addon: Option<&Path>,
) -> Result<(Child, tokio::process::ChildStdout), String> {
    let fprocess = generic.env.get("fprocess").ok_or("no fprocess")?;
    let words = virga_watchdog::config::split_command(fprocess)?;
    let (program, argv) = words.split_first().ok_or("empty fprocess")?;
    let mut cmd = child::command(program);
    cmd.args(flags)
        .args(argv)
        .envs(&generic.env)
        .env("VIRGA_ZYGOTE", socket)
        .current_dir(&generic.workdir);
    if let Some(addon) = addon {
        cmd.env("VIRGA_NODE_ADDON", addon);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    if let Some(err) = child.stderr.take() {
        let log = LogTarget::new(logs.function(&generic.name), "zygote");
        tokio::spawn(forward_log(log, err));
    }
    let stdout = child.stdout.take().ok_or("zygote stdout not captured")?;
    Ok((child, stdout))
}
