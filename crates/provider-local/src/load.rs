//! What the autoscaler reads: a snapshot of each function's load (requests in flight or
//! waiting, arrivals so far, CPU time of its instances).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virga_types::{ScaleType, ScalingPolicy};

use crate::function::Function;
use crate::isolation::Handle;

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

impl FunctionLoad {
    /// The load of `f` now.
    pub(crate) fn of(f: &Function) -> FunctionLoad {
        let cpu = f.policy.kind == ScaleType::Cpu;
        let (running, handles): (u64, Vec<Arc<dyn Handle>>) = {
            let list = f.lock();
            let running = list.iter().map(|i| i.inflight() as u64).sum();
            let handles = if cpu {
                list.iter().filter_map(|i| i.handle().cloned()).collect()
            } else {
                Vec::new()
            };
            (running, handles)
        };
        FunctionLoad {
            name: f.spec.name.clone(),
            policy: f.policy.clone(),
            desired: f.desired.load(Ordering::SeqCst),
            inflight: running + f.waiting.load(Ordering::Relaxed) as u64,
            arrivals: f.arrivals.load(Ordering::Relaxed),
            // Read outside the lock: it reads files.
            cpu_seconds: cpu.then(|| handles.iter().map(|h| h.cpu_seconds()).sum()),
        }
    }
}
