//! The local provider: runs each function's instances on this machine, keeps the wanted
//! number of them alive, and hands the gateway a ready instance (least in-flight first) for
//! every request, starting one when a function is at zero.
//!
//! An instance is ready when its watchdog says so on stdout (`virga-watchdog ready`, pushed,
//! never polled); the provider learns the address from the line the watchdog prints when it
//! binds (`port=0`), so instances never race for ports. Requests count into per-function
//! atomics the autoscaler (`virga-scaler`) reads through [`LocalProvider::loads`].
//!
//! Layout, dependencies pointing one way (each module uses only modules listed after it):
//! - `lib` ([`LocalProvider`]: deploy, scale, lease, shutdown) and `load` (what the autoscaler
//!   reads);
//! - `function`: one function's instances, reconciled to the wanted count, and each
//!   instance's life;
//! - `pool`: the warm pool (`runtime`: which functions may use it; `bind`) and zygotes;
//! - `boot`: starting one instance until its watchdog says it is ready; its log lines;
//! - `config`: the settings, and the context the parts share, holding the isolation they
//!   chose, picked once in [`LocalProvider::new`];
//! - `process` and `sandbox`: the two isolations, plain processes and runc sandboxes, on
//!   `child` (the host processes the platform starts);
//! - `instance`: an instance as requests see it (ready, in flight, [`Lease`]): the hot path;
//! - `isolation`: the contract every isolation meets;
//! - `spec`: what an instance of a function runs (`image`: a registry image's); `error`;
//! - `watchdog_files`: the watchdog with its libraries and loader as a tree (`/virga`).

#![warn(missing_docs)]

mod boot;
mod child;
mod config;
mod function;
mod image;
mod instance;
mod isolation;
mod load;
mod pool;
mod probe;
mod process;
mod provider;
mod sandbox;
mod spec;
pub mod watchdog_files;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use virga_store::{Store, StoredFunction};
use virga_types::ScalingPolicy;

use config::Ctx;
pub use config::{IsolationKind, PoolRuntime, ProviderConfig};
use function::Function;
pub use image::{LAMBDA_ANNOTATION, PORT_ANNOTATION};
pub use pool::pooled_templates;
use pool::WarmPool;
pub use sandbox::Runc;
use spec::InstanceSpec;
pub use spec::OUTBOUND_ANNOTATION;
pub use virga_provider::{FunctionLoad, Lease, ProviderError};

/// Runs function instances on this machine, under the isolation its config chose.
pub struct LocalProvider {
    ctx: Arc<Ctx>,
    store: Arc<Store>,
    functions: Mutex<HashMap<String, Arc<Function>>>,
    pool: Arc<WarmPool>,
}

impl LocalProvider {
    /// A provider for the functions in `store`; clears what a previous run left in `run_dir`.
    pub fn new(cfg: ProviderConfig, store: Arc<Store>) -> Result<LocalProvider, ProviderError> {
        let fail = |reason: String| ProviderError::Prepare {
            name: String::new(),
            reason,
        };
        if cfg.run_dir.exists() {
            std::fs::remove_dir_all(&cfg.run_dir)
                .map_err(|e| fail(format!("clear {}: {e}", cfg.run_dir.display())))?;
        }
        let ctx = Arc::new(Ctx::new(cfg));
        let pool = WarmPool::new(ctx.clone()).map_err(fail)?;
        Ok(LocalProvider {
            pool,
            ctx,
            store,
            functions: Mutex::new(HashMap::new()),
        })
    }

    /// The isolation instances run under, as shown in `/system/info`.
    pub fn isolation(&self) -> &'static str {
        self.ctx.isolation.name()
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
                tracing::error!("restore {}: {e}", f.key());
            }
        }
        Ok(n)
    }

    /// (Re)start a function's instances from its stored definition.
    pub fn deploy(&self, f: &StoredFunction) -> Result<(), ProviderError> {
        let view = self.ctx.isolation.view();
        let spec = InstanceSpec::prepare(
            &self.ctx.cfg.run_dir,
            &self.ctx.cfg.secrets_dir,
            &view,
            &self.store,
            self.ctx.cfg.images.as_deref(),
            &f.deployment,
        )?;
        if matches!(spec.rootfs, spec::Rootfs::Image(_)) && !self.ctx.isolation.images() {
            return Err(ProviderError::Prepare {
                name: f.key(),
                reason: format!(
                    "image functions run in runc sandboxes, and this platform runs {} \
                     instances: start `virga up` as root with runc installed",
                    self.ctx.isolation.name()
                ),
            });
        }
        let policy = ScalingPolicy::from_labels(f.deployment.labels.as_ref()).map_err(|e| {
            ProviderError::Prepare {
                name: f.key(),
                reason: e.to_string(),
            }
        })?;
        let func = Arc::new(Function::new(
            spec,
            policy,
            f.replicas,
            self.ctx.clone(),
            self.pool.clone(),
        ));
        if let Some(use_) = &func.pool_use {
            self.pool.prepare(use_);
        }
        func.reconcile();
        if let Some(old) = self.map().insert(f.key(), func) {
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
        spec::remove_files(&self.ctx.cfg.run_dir, name);
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
                        self.ctx.cfg.metrics.cold_start(name, started.elapsed());
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
                self.ctx.cfg.queue_timeout
            } else {
                self.ctx.cfg.ready_timeout
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

    /// The load of every deployed function.
    pub fn loads(&self) -> Vec<FunctionLoad> {
        let all: Vec<Arc<Function>> = self.map().values().cloned().collect();
        all.iter().map(|f| load::load_of(f)).collect()
    }

    /// Set a function's wanted instances (the autoscaler's decision; not stored).
    pub fn autoscale(&self, name: &str, replicas: u64) {
        if let Ok(f) = self.get(name) {
            f.autoscale(replicas);
        }
    }

    /// Go to zero instances if no request arrived since `arrivals` and none is in flight.
    pub fn scale_idle_to_zero(&self, name: &str, arrivals: u64) -> bool {
        self.get(name).is_ok_and(|f| f.scale_idle_to_zero(arrivals))
    }

    /// Stop every instance (platform shutdown), wait for them to exit, then remove what
    /// their isolation still holds.
    pub async fn shutdown(&self) {
        self.ctx.closing.send_replace(true);
        let all: Vec<_> = self.map().drain().map(|(_, f)| f).collect();
        let mut pids = Vec::new();
        for f in &all {
            pids.extend(f.lock().iter().filter_map(|i| i.pid()));
            f.stop_all();
        }
        pids.extend(self.pool.close().await);
        child::wait_gone(&pids, Duration::from_secs(5)).await;
        self.ctx.isolation.shutdown();
    }
}
