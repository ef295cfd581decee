//! What the autoscaler reads: a snapshot of each function's load (requests in flight or
//! waiting, arrivals so far, CPU time of its instances).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virga_provider::FunctionLoad;
use virga_types::ScaleType;

use crate::function::Function;
use crate::isolation::Handle;

/// The load of `f` now.
pub(crate) fn load_of(f: &Function) -> FunctionLoad {
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
