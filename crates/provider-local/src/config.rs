//! The provider's settings, and what its parts share once it runs: those settings and the
//! isolation they chose.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::isolation::Isolation;
use crate::process::Processes;
use crate::sandbox::Runc;

/// How function instances are isolated from the host and from each other.
#[derive(Debug, Clone)]
pub enum IsolationKind {
    /// Plain processes on the host (development only: no isolation).
    Process,
    /// Each instance in its own runc sandbox.
    Runc(Arc<Runc>),
}

/// A template runtime the warm pool can pre-start: its entrypoint files and the watchdog
/// environment of its template (as `virga build` records them in a bundle).
#[derive(Debug, Clone)]
pub struct PoolRuntime {
    /// Template name, as bundle manifests record it (`python3-http`).
    pub lang: String,
    /// The runtime's files (path relative to the template, contents): everything of the
    /// template but `template.yml` and the `function/` starter.
    pub files: Vec<(PathBuf, Vec<u8>)>,
    /// The template's watchdog environment (`fprocess`, `mode`, `upstream_url`, ...).
    pub env: BTreeMap<String, String>,
}

/// Settings of the local provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Path of the `virga-watchdog` binary.
    pub watchdog: PathBuf,
    /// Directory for per-function runtime files (secrets, empty homes); wiped at start.
    pub run_dir: PathBuf,
    /// Directory the instances' secret files are written to (a tmpfs outside the data
    /// directory: secrets are never on disk in plain text).
    pub secrets_dir: PathBuf,
    /// How long a request waits for an instance to become ready.
    pub ready_timeout: Duration,
    /// How long a request waits for a free slot when every instance is at `max_inflight`.
    pub queue_timeout: Duration,
    /// Where cold starts and OOM kills are counted.
    pub metrics: Arc<virga_metrics::Metrics>,
    /// Where every instance's stdout/stderr lines go.
    pub logs: Arc<virga_logs::LogHub>,
    /// What instances run in.
    pub isolation: IsolationKind,
    /// Pre-started runtimes kept per template runtime (0: no warm pool).
    pub warm_pool: usize,
    /// The template runtimes the warm pool and zygotes may run (the platform's own copies).
    pub runtimes: Vec<PoolRuntime>,
    /// Fork python3-http and node20 runtimes from a pre-forked interpreter (where the
    /// isolation allows it).
    pub zygote: bool,
    /// The image store registry images' layers are in (`None`: no image functions).
    pub images: Option<Arc<virga_oci::Images>>,
    /// The addon a node zygote forks with (`libvirga_node_zygote.so`); `None`: node runtimes
    /// start without a zygote.
    pub node_addon: Option<PathBuf>,
}

/// What every part of a running provider shares: its settings and the isolation they chose.
/// The parts ask `isolation`, never `cfg.isolation`: the choice is made once, here.
pub(crate) struct Ctx {
    pub(crate) cfg: ProviderConfig,
    pub(crate) isolation: Arc<dyn Isolation>,
    /// Set when the platform shuts down: draining instances close their connections now.
    pub(crate) closing: watch::Sender<bool>,
}

impl Ctx {
    /// The shared state of a provider with settings `cfg` (its run directory already made).
    pub(crate) fn new(cfg: ProviderConfig) -> Ctx {
        let isolation: Arc<dyn Isolation> = match &cfg.isolation {
            IsolationKind::Process => Arc::new(Processes::new(&cfg.watchdog, &cfg.run_dir)),
            IsolationKind::Runc(rt) => rt.clone(),
        };
        Ctx {
            cfg,
            isolation,
            closing: watch::channel(false).0,
        }
    }
}
