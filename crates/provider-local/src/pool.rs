//! The warm pool: per template runtime, a few instances started ahead of need (watchdog up,
//! interpreter running with the template's libraries imported, no function loaded). A cold
//! start takes one and binds it to the function's code with a single call, `POST
//! /_/virga/bind` (the code's directory and environment), so neither the process start nor
//! the interpreter start is on the request path. The pool refills itself in the background.
//!
//! A function uses the pool when its bundle's runtime supports binding (python3-http, node)
//! and it sets no watchdog variables of its own (those are fixed when the watchdog starts);
//! other starts take the cold path.
//!
//! Under process isolation the pool also keeps a zygote per forkable runtime (python3-http,
//! node): a runtime with its libraries loaded that forks a new runtime per start, for the
//! starts the pool cannot serve (and, for python3-http, for refilling the pool).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;

use crate::instance::{boot, LogTarget};
use crate::launch::Launch;
use crate::spec::InstanceSpec;
use crate::ProviderConfig;

/// Templates whose runtime can start unbound (`VIRGA_POOL=1`) and be bound later.
const BINDABLE: [&str; 2] = ["python3-http", "node"];

/// A template runtime that can run as a zygote (`VIRGA_ZYGOTE`).
struct Forkable {
    /// The template (pool keys start with `{lang}-`).
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
        lang: "node",
        flags: &["--single-threaded"],
        refill: false,
    },
];

/// How `key`'s runtime forks, if it can.
fn forkable(key: &PoolKey) -> Option<&'static Forkable> {
    FORKABLE
        .iter()
        .find(|f| key.0.starts_with(&format!("{}-", f.lang)))
}

/// Watchdog settings a function may not change when it takes a pooled instance.
const WATCHDOG_KEYS: [&str; 14] = [
    "fprocess",
    "mode",
    "upstream_url",
    "exec_timeout",
    "read_timeout",
    "write_timeout",
    "max_inflight",
    "port",
    "bind_address",
    "content_type",
    "prefix_logs",
    "healthcheck_interval",
    "cgi_headers",
    "log_buffer_size",
];

/// Which generic runtime a function can be bound to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey(String);

/// What a function needs from the pool: its runtime and what to bind it with.
#[derive(Debug, Clone)]
pub(crate) struct PoolUse {
    pub(crate) key: PoolKey,
    /// The generic runtime's spec: the template's watchdog env plus `VIRGA_POOL=1`.
    generic: Arc<InstanceSpec>,
    /// The function's own environment, applied at bind.
    env: BTreeMap<String, String>,
}

impl PoolUse {
    /// The pool use of a function whose bundle at `dir` was built from `lang` with the
    /// watchdog env `template_env`, or `None` when it cannot use the pool.
    pub(crate) fn new(
        lang: &str,
        dir: &Path,
        template_env: &BTreeMap<String, String>,
        function_env: &BTreeMap<String, String>,
        make_generic: impl FnOnce(String, BTreeMap<String, String>) -> InstanceSpec,
    ) -> Option<PoolUse> {
        if !BINDABLE.contains(&lang)
            || template_env.get("mode").map(String::as_str) != Some("http")
            || function_env
                .keys()
                .any(|k| WATCHDOG_KEYS.contains(&k.as_str()))
        {
            return None;
        }
        let entry = ["index.py", "index.js"]
            .iter()
            .find_map(|f| std::fs::read(dir.join(f)).ok())?;
        // Same template runtime and watchdog settings: the same key.
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        h.write(lang.as_bytes());
        h.write(&entry);
        for (k, v) in template_env {
            h.write(k.as_bytes());
            h.write(v.as_bytes());
        }
        let key = PoolKey(format!("{lang}-{:08x}", h.0 as u32));
        let mut env = template_env.clone();
        env.insert("VIRGA_POOL".into(), "1".into());
        let generic = Arc::new(make_generic(format!("pool-{}", key.0), env));
        Some(PoolUse {
            key,
            generic,
            env: function_env.clone(),
        })
    }
}

/// 64-bit FNV-1a: a stable, dependency-free hash for pool keys.
struct Fnv(u64);

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A started, ready instance: its process, sandbox and address, and where its output goes.
pub(crate) struct Booted {
    pub(crate) id: String,
    pub(crate) child: Child,
    pub(crate) launch: Launch,
    pub(crate) addr: SocketAddr,
    pub(crate) log: LogTarget,
}

impl Booted {
    /// Attribute further output to `log` under instance id `id`.
    pub(crate) fn log_as(&self, log: Arc<virga_logs::FunctionLog>, id: &str) {
        self.log.set(log, id);
    }
}

/// Pre-started generic runtimes, by key.
pub(crate) struct WarmPool {
    size: usize,
    cfg: Arc<ProviderConfig>,
    ready: Mutex<HashMap<PoolKey, Vec<Booted>>>,
    starting: Mutex<HashMap<PoolKey, usize>>,
    next: AtomicU64,
    /// Set at shutdown: nothing more is started.
    closed: AtomicBool,
    /// Pre-forked interpreters, by runtime.
    zygotes: Mutex<HashMap<PoolKey, Zygote>>,
    /// A private directory (0700, under the system's temp dir) for zygote sockets, made when
    /// the run directory's path is too long for a unix socket address.
    short_dir: OnceLock<Option<tempfile::TempDir>>,
}

/// A pre-forked interpreter of one template runtime and the socket it takes requests on.
struct Zygote {
    child: Child,
    socket: PathBuf,
    ready: bool,
}

impl WarmPool {
    /// A pool keeping `size` instances per runtime (0 turns it off).
    pub(crate) fn new(size: usize, cfg: Arc<ProviderConfig>) -> Arc<WarmPool> {
        Arc::new(WarmPool {
            size,
            cfg,
            ready: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            zygotes: Mutex::new(HashMap::new()),
            short_dir: OnceLock::new(),
        })
    }

    /// Where `key`'s zygote listens: in the run directory, or in a private short directory
    /// when that path would not fit a unix socket address (108 bytes).
    fn zygote_socket(&self, key: &PoolKey) -> Option<PathBuf> {
        let name = format!("zygote-{}.sock", key.0);
        let fits = |p: &PathBuf| p.as_os_str().len() <= 100;
        let path = self.cfg.run_dir.join(&name);
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

    fn ready(&self) -> MutexGuard<'_, HashMap<PoolKey, Vec<Booted>>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `use_` can be served from this pool at all.
    pub(crate) fn serves(&self, use_: &Option<PoolUse>) -> bool {
        self.size > 0 && use_.is_some()
    }

    /// Start runtimes until `use_`'s key has `size` ready or starting.
    pub(crate) fn fill(self: &Arc<Self>, use_: &PoolUse) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let have = self.ready().get(&use_.key).map_or(0, Vec::len);
        let missing = {
            let mut starting = self.starting.lock().unwrap_or_else(|e| e.into_inner());
            let n = starting.entry(use_.key.clone()).or_default();
            let missing = self.size.saturating_sub(have + *n);
            *n += missing;
            missing
        };
        for _ in 0..missing {
            let (pool, use_) = (self.clone(), use_.clone());
            tokio::spawn(async move {
                let id = format!(
                    "{}-{}",
                    use_.generic.name,
                    pool.next.fetch_add(1, Ordering::Relaxed)
                );
                let zygote = pool
                    .zygote(Some(&use_))
                    .filter(|_| forkable(&use_.key).is_some_and(|f| f.refill));
                let booted = boot(&pool.cfg, &use_.generic, &id, zygote).await;
                if let Some(n) = pool
                    .starting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_mut(&use_.key)
                {
                    *n = n.saturating_sub(1);
                }
                match booted {
                    Ok(mut b) if pool.closed.load(Ordering::SeqCst) => {
                        let _ = b.child.start_kill();
                    }
                    Ok(b) => {
                        let idle = {
                            let mut ready = pool.ready();
                            let list = ready.entry(use_.key.clone()).or_default();
                            list.push(b);
                            list.len()
                        };
                        pool.cfg.metrics.set_warm_pool(&use_.key.0, idle as i64);
                    }
                    Err(e) => tracing::warn!("warm pool {}: {e}", use_.key.0),
                }
            });
        }
    }

    /// A pre-started runtime bound to the function of `spec` (as `use_` describes), if the
    /// pool has one.
    pub(crate) async fn take(
        self: &Arc<Self>,
        spec: &InstanceSpec,
        use_: &PoolUse,
    ) -> Option<Booted> {
        loop {
            let (mut booted, idle) = {
                let mut ready = self.ready();
                let list = ready.get_mut(&use_.key)?;
                (list.pop()?, list.len())
            };
            self.cfg.metrics.set_warm_pool(&use_.key.0, idle as i64);
            self.fill(use_);
            if !matches!(booted.child.try_wait(), Ok(None)) {
                continue;
            }
            match bind(&booted, spec, &use_.env).await {
                Ok(()) => {
                    self.cfg.metrics.warm_start(&spec.name);
                    return Some(booted);
                }
                Err(e) => {
                    tracing::warn!("binding pooled instance {}: {e}", booted.id);
                    let _ = booted.child.start_kill();
                }
            }
        }
    }

    /// Stop filling, wait (bounded) for runtimes still starting, then stop every pooled
    /// runtime; returns their pids to wait for. After this no sandbox appears any more, so
    /// the platform's final clean-up sees them all.
    pub(crate) async fn close(&self) -> Vec<u32> {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + self.cfg.ready_timeout;
        while tokio::time::Instant::now() < deadline {
            let starting: usize = self
                .starting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .sum();
            if starting == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.clear()
    }

    fn zygotes(&self) -> MutexGuard<'_, HashMap<PoolKey, Zygote>> {
        self.zygotes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The socket of `use_`'s zygote, when one is running and ready. A zygote found dead is
    /// replaced for the starts after this one if it had been ready (one that died before is
    /// not: it would only die again; starts go without it).
    pub(crate) fn zygote(self: &Arc<Self>, use_: Option<&PoolUse>) -> Option<PathBuf> {
        let use_ = use_?;
        let mut zygotes = self.zygotes();
        let z = zygotes.get_mut(&use_.key)?;
        if matches!(z.child.try_wait(), Ok(None)) {
            return z.ready.then(|| z.socket.clone());
        }
        let had_served = z.ready;
        zygotes.remove(&use_.key);
        drop(zygotes);
        if had_served {
            tracing::warn!("zygote {} exited; starting a new one", use_.key.0);
            self.ensure_zygote(use_);
        } else {
            tracing::warn!(
                "zygote {} exited before it was ready; starts go without it",
                use_.key.0
            );
        }
        None
    }

    /// Start `use_`'s zygote if its runtime can fork (python3-http, node; process isolation) and
    /// none runs.
    pub(crate) fn ensure_zygote(self: &Arc<Self>, use_: &PoolUse) {
        if !self.cfg.zygote || self.cfg.sandbox.is_some() || self.closed.load(Ordering::SeqCst) {
            return;
        }
        let Some(Forkable { lang, flags, .. }) = forkable(&use_.key) else {
            return;
        };
        let addon = match (*lang, &self.cfg.node_addon) {
            ("node", None) => return,
            ("node", Some(addon)) => Some(addon.as_path()),
            _ => None,
        };
        let Some(socket) = self.zygote_socket(&use_.key) else {
            return;
        };
        let mut zygotes = self.zygotes();
        if let Some(z) = zygotes.get_mut(&use_.key) {
            if matches!(z.child.try_wait(), Ok(None)) {
                return;
            }
        }
        match start_zygote(&self.cfg, &use_.generic, &socket, flags, addon) {
            Ok((child, stdout)) => {
                zygotes.insert(
                    use_.key.clone(),
                    Zygote {
                        child,
                        socket,
                        ready: false,
                    },
                );
                let (pool, key) = (self.clone(), use_.key.clone());
                tokio::spawn(async move {
                    let mut lines = tokio::io::BufReader::new(stdout).lines();
                    let ready =
                        tokio::time::timeout(pool.cfg.ready_timeout, lines.next_line()).await;
                    if matches!(ready, Ok(Ok(Some(ref l))) if l == "virga-zygote ready") {
                        if let Some(z) = pool.zygotes().get_mut(&key) {
                            z.ready = true;
                        }
                    } else {
                        tracing::warn!("zygote {}: not ready ({ready:?})", key.0);
                    }
                });
            }
            Err(e) => tracing::warn!("zygote {}: {e}", use_.key.0),
        }
    }

    /// Stop every pooled runtime; returns their pids to wait for.
    fn clear(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        for (_, mut z) in self.zygotes().drain() {
            pids.extend(z.child.id());
            let _ = z.child.start_kill();
        }
        for (_, list) in self.ready().drain() {
            for mut b in list {
                pids.extend(b.child.id());
                let _ = b.child.start_kill();
            }
        }
        pids
    }
}

/// Start the zygote of the runtime `generic` describes, listening on `socket`: its program
/// with the interpreter `flags`, and node's fork `addon` when it needs one.
fn start_zygote(
    cfg: &ProviderConfig,
    generic: &InstanceSpec,
    socket: &Path,
    flags: &[&str],
    addon: Option<&Path>,
) -> Result<(Child, tokio::process::ChildStdout), String> {
    let fprocess = generic.env.get("fprocess").ok_or("no fprocess")?;
    let mut argv = fprocess.split_whitespace();
    let program = argv.next().ok_or("empty fprocess")?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(flags)
        .args(argv)
        .env_clear()
        .envs(crate::launch::inherited_env())
        .envs(&generic.env)
        .env("VIRGA_ZYGOTE", socket)
        .current_dir(&generic.workdir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; the zygote dies with the platform.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    if let Some(addon) = addon {
        cmd.env("VIRGA_NODE_ADDON", addon);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    if let Some(err) = child.stderr.take() {
        let log = LogTarget::new(cfg.logs.function(&generic.name), "zygote");
        tokio::spawn(crate::instance::forward_log(log, err));
    }
    let stdout = child.stdout.take().ok_or("zygote stdout not captured")?;
    Ok((child, stdout))
}

/// Give the instance the function's code and secrets (in a sandbox: mounts and limits), then
/// `POST /_/virga/bind` so the runtime loads the code with `env`.
async fn bind(
    booted: &Booted,
    spec: &InstanceSpec,
    env: &BTreeMap<String, String>,
) -> Result<(), String> {
    let mut env = env.clone();
    let dir = match &booted.launch {
        Launch::Process => spec.workdir.clone(),
        Launch::Sandbox(rt, sb) => {
            rt.bind(sb, spec)?;
            env.insert(
                "secret_mount_path".into(),
                virga_types::SECRETS_MOUNT.into(),
            );
            PathBuf::from("/home/app")
        }
    };
    let addr = booted.addr;
    let body = serde_json::json!({"dir": dir, "env": env}).to_string();
    let req = format!(
        "POST /_/virga/bind HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    if text.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(text.lines().last().unwrap_or("no answer").to_string())
    }
}
