//! A [`Provider`] that runs each instance as a real `virga-watchdog` process on the host, for
//! testing the gateway alone: no runc, no root, no pool, no autoscaler. A deployment's
//! `envProcess` is the watchdog's `fprocess` and its `envVars` are the watchdog's environment
//! (`mode`, `upstream_url`, `max_inflight`, ...). Wanted instances start on deploy and scale;
//! a lease picks the least busy reachable instance, starting a replacement when every
//! instance was marked unreachable. Each watchdog takes WebSocket hand-offs on a socket of its
//! own (`handoff_socket`, in the temporary directory unless the deployment sets it).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::BoxFuture;
use virga_metrics::FunctionGauges;
use virga_provider::{FunctionLoad, Lease, LeaseSlot, Provider, ProviderError};
use virga_store::StoredFunction;
use virga_types::FunctionDeployment;

use crate::watchdog::Watchdog;

/// Instances as real watchdog processes; see the module documentation.
#[derive(Default)]
pub struct WatchdogProvider {
    functions: Mutex<BTreeMap<String, Function>>,
    next_id: AtomicUsize,
}

/// One deployed function.
struct Function {
    deployment: FunctionDeployment,
    wanted: u64,
    instances: Vec<Arc<Instance>>,
    /// Set by [`WatchdogProvider::report_oom_kill`]; taken by the next failed call's lease.
    oom_killed: Arc<AtomicBool>,
}

/// One running watchdog and its lease bookkeeping.
struct Instance {
    id: String,
    addr: SocketAddr,
    watchdog: Mutex<Watchdog>,
    inflight: AtomicUsize,
    unreachable: AtomicBool,
    oom_killed: Arc<AtomicBool>,
    /// The watchdog's hand-off socket.
    handoff: PathBuf,
}

impl LeaseSlot for Instance {
    fn id(&self) -> &str {
        &self.id
    }
    fn release(&self) {
        self.inflight.fetch_sub(1, Ordering::SeqCst);
    }
    fn mark_unreachable(&self) {
        self.unreachable.store(true, Ordering::SeqCst);
    }
    fn take_oom_kill(&self) -> bool {
        self.oom_killed.swap(false, Ordering::SeqCst)
    }
    fn handoff(&self) -> Option<&Path> {
        Some(&self.handoff)
    }
}

impl WatchdogProvider {
    /// A provider with no function.
    pub fn new() -> Arc<WatchdogProvider> {
        Arc::new(WatchdogProvider::default())
    }

    /// SIGKILL every watchdog of `name` (as an instance dying after it was picked); the
    /// provider still lists them until a lease marks them unreachable.
    pub fn kill_instances(&self, name: &str) {
        if let Some(f) = self.lock().get(name) {
            for i in &f.instances {
                i.watchdog.lock().unwrap().kill9();
            }
        }
    }

    /// The ids of `name`'s instances, oldest first.
    pub fn instances(&self, name: &str) -> Vec<String> {
        self.lock()
            .get(name)
            .map(|f| f.instances.iter().map(|i| i.id.clone()).collect())
            .unwrap_or_default()
    }

    /// Report that one of `name`'s instances was OOM-killed, as a cgroup would: the next
    /// failed call sees it.
    pub fn report_oom_kill(&self, name: &str) {
        if let Some(f) = self.lock().get(name) {
            f.oom_killed.store(true, Ordering::SeqCst);
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Function>> {
        self.functions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Start or stop instances of `f` until `wanted` are running.
    fn converge(&self, f: &mut Function) -> Result<(), ProviderError> {
        f.instances
            .retain(|i| !i.unreachable.load(Ordering::SeqCst));
        f.instances.truncate(f.wanted as usize);
        while (f.instances.len() as u64) < f.wanted {
            let i = self.start_instance(f)?;
            f.instances.push(i);
        }
        Ok(())
    }

    fn start_instance(&self, f: &Function) -> Result<Arc<Instance>, ProviderError> {
        let d = &f.deployment;
        let n = self.next_id.fetch_add(1, Ordering::SeqCst);
        // Hand-offs as the platform's provider sets them up, unless the deployment names the
        // socket itself.
        let handoff = d.env_vars.get("handoff_socket").map_or_else(
            || std::env::temp_dir().join(format!("virga-tk-{}-{n}.sock", std::process::id())),
            PathBuf::from,
        );
        let handoff_var = handoff.to_string_lossy().into_owned();
        let mut env: Vec<(&str, &str)> = vec![
            ("fprocess", d.env_process.as_str()),
            ("handoff_socket", &handoff_var),
        ];
        env.extend(d.env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let watchdog = Watchdog::start(&env);
        let addr = watchdog.addr.parse().map_err(|e| ProviderError::Prepare {
            name: d.service.clone(),
            reason: format!("watchdog address {:?}: {e}", watchdog.addr),
        })?;
        Ok(Arc::new(Instance {
            id: format!("{}-{n}", d.service),
            addr,
            watchdog: Mutex::new(watchdog),
            inflight: AtomicUsize::new(0),
            unreachable: AtomicBool::new(false),
            oom_killed: f.oom_killed.clone(),
            handoff,
        }))
    }

    /// The least busy reachable instance of `name` with a free slot, claimed.
    fn pick(&self, name: &str) -> Result<Lease, ProviderError> {
        let mut functions = self.lock();
        let f = functions
            .get_mut(name)
            .ok_or_else(|| ProviderError::NotFound(name.to_string()))?;
        if f.wanted == 0 {
            return Err(ProviderError::NotReady {
                name: name.to_string(),
                waited: Duration::ZERO,
                reason: "scaled to zero, and this provider starts instances only on scale".into(),
            });
        }
        if f.instances
            .iter()
            .all(|i| i.unreachable.load(Ordering::SeqCst))
        {
            self.converge(f)?;
        }
        let limit: usize = f
            .deployment
            .env_vars
            .get("max_inflight")
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(usize::MAX);
        let free = f
            .instances
            .iter()
            .filter(|i| !i.unreachable.load(Ordering::SeqCst))
            .filter(|i| i.inflight.load(Ordering::SeqCst) < limit)
            .min_by_key(|i| i.inflight.load(Ordering::SeqCst));
        let Some(i) = free else {
            return Err(ProviderError::AtCapacity {
                name: name.to_string(),
                limit,
                waited: Duration::ZERO,
            });
        };
        i.inflight.fetch_add(1, Ordering::SeqCst);
        Ok(Lease::new(i.addr, i.clone()))
    }
}

impl Provider for WatchdogProvider {
    fn name(&self) -> &'static str {
        "virga-testkit"
    }
    fn isolation(&self) -> &'static str {
        "process"
    }
    fn restore(&self) -> Result<usize, ProviderError> {
        Ok(0)
    }
    fn deploy(&self, stored: &StoredFunction) -> Result<(), ProviderError> {
        let mut f = Function {
            deployment: stored.deployment.clone(),
            wanted: stored.replicas,
            instances: Vec::new(),
            oom_killed: Arc::new(AtomicBool::new(false)),
        };
        self.converge(&mut f)?;
        // The old instances stop when the old entry drops.
        self.lock().insert(stored.deployment.service.clone(), f);
        Ok(())
    }
    fn remove(&self, name: &str) {
        self.lock().remove(name);
    }
    fn scale(&self, name: &str, replicas: u64) -> Result<(), ProviderError> {
        let mut functions = self.lock();
        let f = functions
            .get_mut(name)
            .ok_or_else(|| ProviderError::NotFound(name.to_string()))?;
        f.wanted = replicas;
        self.converge(f)
    }
    fn replicas(&self, name: &str) -> (u64, u64) {
        self.lock()
            .get(name)
            .map_or((0, 0), |f| (f.wanted, f.instances.len() as u64))
    }
    fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }
    fn lease<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Lease, ProviderError>> {
        Box::pin(async move { self.pick(name) })
    }
    fn gauges(&self) -> Vec<FunctionGauges> {
        self.lock()
            .iter()
            .map(|(name, f)| FunctionGauges {
                name: name.clone(),
                replicas: f.wanted,
                starting: 0,
                ready: f.instances.len() as u64,
            })
            .collect()
    }
    fn loads(&self) -> Vec<FunctionLoad> {
        // No autoscaler runs over this provider.
        Vec::new()
    }
    fn autoscale(&self, name: &str, replicas: u64) {
        let _ = self.scale(name, replicas);
    }
    fn scale_idle_to_zero(&self, _name: &str, _arrivals: u64) -> bool {
        false
    }
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.lock().clear();
        Box::pin(async {})
    }
}
