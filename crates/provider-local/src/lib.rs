//! The local provider: runs each function's instances on this machine as `virga-watchdog`
//! child processes, keeps the wanted number of them alive, and hands the gateway a ready
//! instance (least in-flight first) for every request, starting one when a function is at zero.
//!
//! An instance is ready when its watchdog says so on stdout (`virga-watchdog ready`, pushed,
//! never polled); the provider learns the port from the line the watchdog prints when it binds
//! (`port=0`), so instances never race for ports. Requests count into per-function atomics the
//! autoscaler (`virga-scaler`) reads through [`LocalProvider::loads`].

mod boot;
mod instance;
mod launch;
mod load;
mod pool;
mod provider;
mod sandbox;
mod spec;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use virga_store::{Store, StoredFunction};
use virga_types::ScalingPolicy;

use instance::Instance;
pub use pool::PoolRuntime;
use pool::{PoolUse, WarmPool};
pub use sandbox::Runc;
pub use spec::{InstanceSpec, OUTBOUND_ANNOTATION};
pub use virga_provider::{FunctionLoad, Lease, ProviderError};

/// Settings of the local provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Path of the `virga-watchdog` binary.
    pub watchdog: PathBuf,
    /// Directory for per-function runtime files (empty homes, runtimes); wiped at start.
    pub run_dir: PathBuf,
    /// Empty directory on a tmpfs outside the data directory, where each definition's
    /// secrets are written for its instances (the caller creates and removes it).
    pub secrets_dir: PathBuf,
    /// How long a request waits for an instance to become ready.
    pub ready_timeout: Duration,
    /// How long a request waits for a free slot when every instance is at `max_inflight`.
    pub queue_timeout: Duration,
    /// Where cold starts and OOM kills are counted.
    pub metrics: Arc<virga_metrics::Metrics>,
    /// Where every instance's stdout/stderr lines go.
    pub logs: Arc<virga_logs::LogHub>,
    /// The sandbox runtime; `None` runs instances as plain processes.
    pub sandbox: Option<Arc<Runc>>,
    /// Pre-started runtimes kept per template runtime (0: no warm pool).
    pub warm_pool: usize,
    /// The template runtimes the warm pool and zygotes may run (the platform's own copies).
    pub runtimes: Vec<PoolRuntime>,
    /// Fork python3-http and node20 runtimes from a pre-forked interpreter (process isolation).
    pub zygote: bool,
    /// The addon a node zygote forks with (`libvirga_node_zygote.so`); `None`: node runtimes
    /// start without a zygote.
    pub node_addon: Option<PathBuf>,
}

/// Instance numbers, unique for the platform's life (sandbox names derive from them).
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

/// One function's instances.
pub(crate) struct Function {
    pub(crate) spec: Arc<InstanceSpec>,
    /// How its starts can use the warm pool and zygotes, if they can.
    pub(crate) pool_use: Option<PoolUse>,
    pub(crate) desired: AtomicU64,
    pub(crate) instances: Mutex<Vec<Arc<Instance>>>,
    /// Woken whenever an instance becomes ready or dies, or a limited instance frees a slot.
    pub(crate) changed: Arc<Notify>,
    /// The `com.openfaas.scale.*` labels.
    pub(crate) policy: ScalingPolicy,
    /// The watchdog's `max_inflight` (0: unlimited).
    pub(crate) limit: usize,
    /// Requests that asked for an instance, ever (the autoscaler's rps and idleness).
    pub(crate) arrivals: AtomicU64,
    /// Requests waiting for an instance right now.
    pub(crate) waiting: AtomicUsize,
    pub(crate) stopped: AtomicBool,
    /// Consecutive instances that died before serving; drives restart backoff.
    pub(crate) crash_streak: AtomicUsize,
    pub(crate) cfg: Arc<ProviderConfig>,
    pub(crate) pool: Arc<WarmPool>,
}

impl Function {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Vec<Arc<Instance>>> {
        self.instances.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ready_count(&self) -> u64 {
        self.lock().iter().filter(|i| i.is_ready()).count() as u64
    }

    /// Start or stop instances until their number matches `desired`.
    pub(crate) fn reconcile(self: &Arc<Self>) {
        if self.stopped.load(Ordering::SeqCst) {
            return;
        }
        // Never beyond the function's own maximum, whatever was stored or asked for.
        let want = self.desired.load(Ordering::SeqCst).min(self.policy.max) as usize;
        let mut list = self.lock();
        while list.len() < want {
            let id = format!(
                "{}-{}",
                self.spec.name,
                NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed)
            );
            let inst = Arc::new(Instance::new(id, self.limit, &self.changed));
            list.push(inst.clone());
            tokio::spawn(instance::run(self.clone(), inst));
        }
        if list.len() > want {
            // Stop the least useful first: not ready, then least busy.
            list.sort_by_key(|i| (i.is_ready(), usize::MAX - i.inflight()));
            let surplus = list.len() - want;
            for inst in list.drain(..surplus) {
                inst.stop();
            }
        }
    }

    fn stop_all(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for inst in self.lock().drain(..) {
            inst.stop();
        }
        self.changed.notify_waiters();
    }
}

/// Runs function instances as local processes.
pub struct LocalProvider {
    cfg: Arc<ProviderConfig>,
    store: Arc<Store>,
    functions: Mutex<HashMap<String, Arc<Function>>>,
    pool: Arc<WarmPool>,
}

impl LocalProvider {
    /// A provider for the functions in `store`; clears what a previous run left in `run_dir`.
    pub fn new(cfg: ProviderConfig, store: Arc<Store>) -> Result<LocalProvider, ProviderError> {
        if cfg.run_dir.exists() {
            std::fs::remove_dir_all(&cfg.run_dir).map_err(|e| ProviderError::Prepare {
                name: String::new(),
                reason: format!("clear {}: {e}", cfg.run_dir.display()),
            })?;
        }
        launch::provide_python(&cfg.run_dir);
        let cfg = Arc::new(cfg);
        let pool =
            WarmPool::new(cfg.warm_pool, cfg.clone()).map_err(|reason| ProviderError::Prepare {
                name: String::new(),
                reason,
            })?;
        Ok(LocalProvider {
            pool,
            cfg,
            store,
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// The isolation instances run under, as shown in `/system/info`.
    pub fn isolation(&self) -> &'static str {
        if self.cfg.sandbox.is_some() {
            "runc"
        } else {
            "process"
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Function>>> {
        self.functions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start every stored function at its stored replica count (after a restart).
    pub fn restore(&self) -> Result<usize, ProviderError> {
        let functions = self.store.functions().map_err(|e| ProviderError::Prepare {
            name: String::new(),
            reason: e.to_string(),
        })?;
        let n = functions.len();
        for f in functions {
            if let Err(e) = self.deploy(&f) {
                tracing::error!("restore {}: {e}", f.deployment.service);
            }
        }
        Ok(n)
    }

    /// (Re)start a function's instances from its stored definition.
    pub fn deploy(&self, f: &StoredFunction) -> Result<(), ProviderError> {
        let spec = InstanceSpec::prepare(&self.cfg, &self.store, &f.deployment)?;
        let policy = ScalingPolicy::from_labels(f.deployment.labels.as_ref()).map_err(|e| {
            ProviderError::Prepare {
                name: f.deployment.service.clone(),
                reason: e.to_string(),
            }
        })?;
        let limit = spec
            .env
            .get("max_inflight")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let pool_use = self.pool.use_for(&spec);
        let func = Arc::new(Function {
            spec: Arc::new(spec),
            pool_use,
            desired: AtomicU64::new(f.replicas),
            instances: Mutex::new(Vec::new()),
            changed: Arc::new(Notify::new()),
            policy,
            limit,
            arrivals: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            crash_streak: AtomicUsize::new(0),
            cfg: self.cfg.clone(),
            pool: self.pool.clone(),
        });
        if let Some(use_) = &func.pool_use {
            self.pool.prepare(use_);
        }
        func.reconcile();
        if let Some(old) = self.map().insert(f.deployment.service.clone(), func) {
            old.stop_all();
        }
        Ok(())
    }

    /// Set the wanted number of instances.
    pub fn scale(&self, name: &str, replicas: u64) -> Result<(), ProviderError> {
        let func = self.get(name)?;
        func.desired.store(replicas, Ordering::SeqCst);
        func.reconcile();
        Ok(())
    }

    /// Stop all instances of a function and forget it.
    pub fn remove(&self, name: &str) {
        if let Some(func) = self.map().remove(name) {
            func.stop_all();
        }
        spec::remove_files(&self.cfg, name);
    }

    /// (desired, ready) instance counts; (0, 0) for an unknown function.
    pub fn replicas(&self, name: &str) -> (u64, u64) {
        match self.get(name) {
            Ok(f) => (f.desired.load(Ordering::SeqCst), f.ready_count()),
            Err(_) => (0, 0),
        }
    }

    fn get(&self, name: &str) -> Result<Arc<Function>, ProviderError> {
        self.map()
            .get(name)
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(name.to_string()))
    }

    /// A ready instance of `name` (least in-flight, below its `max_inflight`), waiting for one
    /// to start when the function is at zero, or briefly for a free slot when all are full.
    pub async fn lease(&self, name: &str) -> Result<Lease, ProviderError> {
        let func = self.get(name)?;
        func.arrivals.fetch_add(1, Ordering::Relaxed);
        if let Some(lease) = instance::pick(&func.lock()) {
            return Ok(lease);
        }
        func.waiting.fetch_add(1, Ordering::Relaxed);
        let result = self.wait_for_instance(&func).await;
        func.waiting.fetch_sub(1, Ordering::Relaxed);
        result
    }

    async fn wait_for_instance(&self, func: &Arc<Function>) -> Result<Lease, ProviderError> {
        let name = &func.spec.name;
        let started = tokio::time::Instant::now();
        let mut cold = false;
        loop {
            let notified = func.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let full = {
                let list = func.lock();
                if let Some(lease) = instance::pick(&list) {
                    if cold {
                        self.cfg.metrics.cold_start(name, started.elapsed());
                    }
                    return Ok(lease);
                }
                func.limit > 0 && list.iter().any(|i| i.is_ready())
            };
            if func.stopped.load(Ordering::SeqCst) {
                return Err(ProviderError::NotFound(name.to_string()));
            }
            if !full && func.desired.load(Ordering::SeqCst) == 0 {
                // Scale from zero: the request waits for the instance it caused.
                func.desired.store(1, Ordering::SeqCst);
                func.reconcile();
            }
            cold |= !full;
            // Full instances make a request wait briefly (then 429); none ready, until one is.
            let limit = if full {
                self.cfg.queue_timeout
            } else {
                self.cfg.ready_timeout
            };
            if tokio::time::timeout_at(started + limit, notified)
                .await
                .is_err()
            {
                return Err(if full {
                    ProviderError::AtCapacity {
                        name: name.to_string(),
                        limit: func.limit,
                        waited: started.elapsed(),
                    }
                } else {
                    ProviderError::NotReady {
                        name: name.to_string(),
                        waited: started.elapsed(),
                        reason: func.spec.describe_failure(),
                    }
                });
            }
        }
    }

    /// Whether a function of that name is deployed here.
    pub fn contains(&self, name: &str) -> bool {
        self.map().contains_key(name)
    }

    /// Wanted, starting and ready instances of every function, for `/metrics`.
    pub fn gauges(&self) -> Vec<virga_metrics::FunctionGauges> {
        let all: Vec<_> = self.map().values().cloned().collect();
        all.iter()
            .map(|f| {
                let list = f.lock();
                let ready = list.iter().filter(|i| i.is_ready()).count() as u64;
                virga_metrics::FunctionGauges {
                    name: f.spec.name.clone(),
                    replicas: f.desired.load(Ordering::SeqCst),
                    starting: list.len() as u64 - ready,
                    ready,
                }
            })
            .collect()
    }

    /// Stop every instance (platform shutdown) and wait for them to exit.
    pub async fn shutdown(&self) {
        let all: Vec<_> = self.map().drain().map(|(_, f)| f).collect();
        let mut pids = Vec::new();
        for f in &all {
            pids.extend(f.lock().iter().filter_map(|i| i.pid()));
            f.stop_all();
        }
        pids.extend(self.pool.close().await);
        boot::wait_gone(&pids, Duration::from_secs(5)).await;
    }
}
