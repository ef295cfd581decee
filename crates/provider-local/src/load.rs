//! What the autoscaler reads and sets: a snapshot of each function's load (requests in flight
//! or waiting, arrivals so far, CPU time of its instances) and the replica changes it decides,
//! including going to zero only if no request arrived since the snapshot it decided on.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use virga_provider::FunctionLoad;
use virga_types::ScaleType;

use crate::{Function, LocalProvider};

impl LocalProvider {
    /// The load of every deployed function.
    pub fn loads(&self) -> Vec<FunctionLoad> {
        let all: Vec<Arc<Function>> = self.map().values().cloned().collect();
        all.iter().map(|f| self.load_of(f)).collect()
    }

    fn load_of(&self, f: &Function) -> FunctionLoad {
        let (running, pids): (u64, Vec<u32>) = {
            let list = f.lock();
            let running = list.iter().map(|i| i.inflight() as u64).sum();
            (running, list.iter().filter_map(|i| i.pid()).collect())
        };
        let cpu_seconds = (f.policy.kind == ScaleType::Cpu).then(|| match &self.cfg.sandbox {
            Some(rt) => rt.cpu_seconds(&f.spec.name),
            None => pids.iter().map(|&p| group_cpu_seconds(p)).sum(),
        });
        FunctionLoad {
            name: f.spec.name.clone(),
            policy: f.policy.clone(),
            desired: f.desired.load(Ordering::SeqCst),
            inflight: running + f.waiting.load(Ordering::Relaxed) as u64,
            arrivals: f.arrivals.load(Ordering::Relaxed),
            cpu_seconds,
        }
    }

    /// Set a function's wanted instances (the autoscaler's decision; not stored).
    pub fn autoscale(&self, name: &str, replicas: u64) {
        if let Ok(f) = self.get(name) {
            if f.desired.load(Ordering::SeqCst) != 0 {
                f.desired.store(replicas.max(1), Ordering::SeqCst);
                f.reconcile();
            }
        }
    }

    /// Go to zero instances if no request arrived since `arrivals` and none is in flight.
    pub fn scale_idle_to_zero(&self, name: &str, arrivals: u64) -> bool {
        let Ok(f) = self.get(name) else {
            return false;
        };
        let list = f.lock();
        let busy = list.iter().any(|i| i.inflight() > 0) || f.waiting.load(Ordering::SeqCst) > 0;
        if busy || f.arrivals.load(Ordering::SeqCst) != arrivals {
            return false;
        }
        f.desired.store(0, Ordering::SeqCst);
        drop(list);
        f.reconcile();
        true
    }
}

/// CPU seconds (user + system, including waited-for children) of every process in the
/// process group `pgid`, from `/proc`.
fn group_cpu_seconds(pgid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for e in dir.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces) start at the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state); pgrp is field 5, utime..cstime are fields 14-17.
        if f.len() > 14 && f[2].parse::<u32>().ok() == Some(pgid) {
            ticks += f[11..15]
                .iter()
                .filter_map(|v| v.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    ticks as f64 / hz
}
