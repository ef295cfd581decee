//! The provider seam. The gateway and the autoscaler know instances only through
//! [`Provider`]: deploy, remove and scale functions, [`Provider::lease`] a ready instance for
//! one request, and read replica counts, gauges and load. `virga-provider-local` implements it
//! with processes or runc sandboxes on this machine; another implementation (Kubernetes, say)
//! is another crate behind the same trait.
//!
//! A [`Lease`] is one request's claim on one instance: its address, and a [`LeaseSlot`] the
//! provider implements to learn when the request is done (the lease is dropped), when the
//! instance refused the connection, and whether it was OOM-killed meanwhile; it tells an
//! upgraded connection holding it when to close ([`Lease::closing`]). A removed instance
//! waits for its leases to end (its drain grace) before it is stopped.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use thiserror::Error;
use virga_metrics::FunctionGauges;
use virga_store::StoredFunction;
use virga_types::ScalingPolicy;

/// Runs function instances.
pub trait Provider: Send + Sync + 'static {
    /// The provider's name, as `/system/info` shows it (`provider.provider`).
    fn name(&self) -> &'static str;
    /// How its instances are isolated (`runc`, `process`), for `/system/info`.
    fn isolation(&self) -> &'static str;
    /// Start every stored function at its stored replica count (after a restart); how many.
    fn restore(&self) -> Result<usize, ProviderError>;
    /// (Re)start a function's instances from its stored definition.
    fn deploy(&self, f: &StoredFunction) -> Result<(), ProviderError>;
    /// Stop a function's instances and forget it.
    fn remove(&self, name: &str);
    /// Set the wanted number of instances.
    fn scale(&self, name: &str, replicas: u64) -> Result<(), ProviderError>;
    /// (wanted, ready) instances; (0, 0) for an unknown function.
    fn replicas(&self, name: &str) -> (u64, u64);
    /// Whether a function of that name is deployed.
    fn contains(&self, name: &str) -> bool;
    /// A ready instance of `name` for one request, waiting for one to start when the function
    /// is at zero, or briefly for a free slot when every instance is at its `max_inflight`.
    fn lease<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Lease, ProviderError>>;
    /// Wanted, starting and ready instances of every function, for `/metrics`.
    fn gauges(&self) -> Vec<FunctionGauges>;
    /// The load of every function, for the autoscaler.
    fn loads(&self) -> Vec<FunctionLoad>;
    /// Set a running function's wanted instances (the autoscaler's decision; not stored).
    fn autoscale(&self, name: &str, replicas: u64);
    /// Go to zero instances if no request arrived since `arrivals` and none is in flight;
    /// whether it did.
    fn scale_idle_to_zero(&self, name: &str, arrivals: u64) -> bool;
    /// Stop every instance (platform shutdown) and wait for them to exit.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// A shared provider.
pub type SharedProvider = Arc<dyn Provider>;

/// What a provider keeps for one leased instance.
pub trait LeaseSlot: Send + Sync {
    /// The instance's id, for logs and errors.
    fn id(&self) -> &str;
    /// The request is done (the lease was dropped): free its in-flight slot.
    fn release(&self);
    /// The instance refused the connection: take it out of rotation (a retry goes elsewhere).
    fn mark_unreachable(&self);
    /// Whether the instance was OOM-killed since this was last asked.
    fn take_oom_kill(&self) -> bool;
    /// Completes when the instance is going away and a long-lived use of it (an upgraded
    /// connection) must end now: its drain grace is over. Never, unless the provider drains.
    fn closing(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::pending())
    }
    /// The Unix socket on which the instance's watchdog takes upgraded client connections
    /// handed over by the gateway (`virga_http::handoff`), where it can.
    fn handoff(&self) -> Option<&Path> {
        None
    }
}

/// A claim on one instance for one request; releases its slot when dropped.
pub struct Lease {
    addr: SocketAddr,
    slot: Arc<dyn LeaseSlot>,
}

impl Lease {
    /// A lease of the instance at `addr` whose slot is `slot` (already claimed).
    pub fn new(addr: SocketAddr, slot: Arc<dyn LeaseSlot>) -> Lease {
        Lease { addr, slot }
    }

    /// The instance's watchdog address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The instance id.
    pub fn instance(&self) -> &str {
        self.slot.id()
    }

    /// The instance refused the connection: take it out of rotation.
    pub fn mark_unreachable(&self) {
        self.slot.mark_unreachable();
    }

    /// True when the instance was OOM-killed since the last time this was asked.
    pub fn take_oom_kill(&self) -> bool {
        self.slot.take_oom_kill()
    }

    /// Completes when a long-lived use of the instance (an upgraded connection) must end:
    /// the instance is being removed and its drain grace is over.
    pub fn closing(&self) -> BoxFuture<'_, ()> {
        self.slot.closing()
    }

    /// [`Lease::closing`], owning what it needs (for a body that holds the lease).
    pub fn closing_owned(&self) -> BoxFuture<'static, ()> {
        let slot = self.slot.clone();
        Box::pin(async move { slot.closing().await })
    }

    /// Where the instance's watchdog takes handed-over client connections, if it does.
    pub fn handoff(&self) -> Option<&Path> {
        self.slot.handoff()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.slot.release();
    }
}

/// One function's load at one moment.
#[derive(Debug, Clone)]
pub struct FunctionLoad {
    /// Function name.
    pub name: String,
    /// Its scaling labels.
    pub policy: ScalingPolicy,
    /// Wanted instances now.
    pub desired: u64,
    /// Requests in flight on instances plus those waiting for one.
    pub inflight: u64,
    /// Requests that arrived since the function was deployed (monotonic).
    pub arrivals: u64,
    /// CPU seconds used by its live instances (only for `cpu`-type functions).
    pub cpu_seconds: Option<f64>,
}

/// Errors a provider reports.
#[derive(Debug, Error)]
pub enum ProviderError {
    /// No function of that name is deployed.
    #[error("function {0:?} not found")]
    NotFound(String),
    /// No instance became ready in time.
    #[error("function {name:?} has no ready instance after {waited:?}: {reason}")]
    NotReady {
        /// Function name.
        name: String,
        /// How long the request waited.
        waited: Duration,
        /// What the instances were doing.
        reason: String,
    },
    /// Every instance is at its `max_inflight` and none freed up in time.
    #[error("function {name:?} is at capacity: every instance has {limit} requests in flight (max_inflight), waited {waited:?}")]
    AtCapacity {
        /// Function name.
        name: String,
        /// The per-instance limit.
        limit: usize,
        /// How long the request waited.
        waited: Duration,
    },
    /// The function's code or secrets could not be prepared.
    #[error("cannot prepare function {name:?}: {reason}")]
    Prepare {
        /// Function name.
        name: String,
        /// Why.
        reason: String,
    },
}
