//! The warm pool: per template runtime, a few instances started ahead of need (watchdog up,
//! interpreter running with the template's libraries imported, no function loaded). A cold
//! start takes one and binds it to the function's code with a single authenticated call (see
//! [`bind`]), so neither the process start nor the interpreter start is on the request path.
//! The pool refills itself in the background.
//!
//! Pooled runtimes start from the platform's own copy of their template, never from a
//! function's bundle, and are bound once: a pooled instance has held no other function's code
//! or secrets, and the runtimes a pool refills with are the same whichever function took the
//! last one ([`runtime`]). A function takes a pooled runtime only when its bundle was built from
//! that template unchanged and it sets no watchdog variables of its own (those are fixed when
//! the watchdog starts); other starts take the cold path.
//!
//! Where the isolation allows it, the pool also keeps a zygote per forkable runtime ([`zygote`]).

mod bind;
mod runtime;
mod zygote;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) use runtime::PoolUse;

/// The templates whose runtimes the warm pool pre-starts.
pub fn pooled_templates() -> impl Iterator<Item = &'static str> {
    runtime::BINDABLE.iter().map(|(lang, _)| *lang)
}
use runtime::{Installed, PoolKey};
use zygote::Zygotes;

use crate::boot::{boot, Booted};
use crate::config::Ctx;
use crate::spec::InstanceSpec;

/// Pre-started generic runtimes, by key.
pub(crate) struct WarmPool {
    size: usize,
    ctx: Arc<Ctx>,
    runtimes: Vec<Arc<Installed>>,
    ready: Mutex<HashMap<PoolKey, Vec<Booted>>>,
    starting: Mutex<HashMap<PoolKey, usize>>,
    next: AtomicU64,
    /// Set at shutdown: nothing more is started.
    closed: AtomicBool,
    zygotes: Arc<Zygotes>,
}

impl WarmPool {
    /// A pool keeping `cfg.warm_pool` instances per runtime (0 turns it off), with the
    /// runtimes of `cfg` installed under the run directory.
    pub(crate) fn new(ctx: Arc<Ctx>) -> Result<Arc<WarmPool>, String> {
        let cfg = &ctx.cfg;
        let runtimes = runtime::install(&cfg.run_dir.join("runtimes"), &cfg.runtimes)?;
        Ok(Arc::new(WarmPool {
            size: cfg.warm_pool,
            zygotes: Zygotes::new(ctx.clone()),
            ctx,
            runtimes,
            ready: Mutex::new(HashMap::new()),
            starting: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        }))
    }

    /// How the function of `spec` can use the pool (and its runtime's zygote), if it can.
    pub(crate) fn use_for(&self, spec: &InstanceSpec) -> Option<PoolUse> {
        let template = spec
            .template
            .as_ref()
            .filter(|_| spec.outbound && !spec.unbound)?;
        runtime::use_for(&self.runtimes, template, &spec.workdir, &spec.bind_env)
    }

    fn ready(&self) -> MutexGuard<'_, HashMap<PoolKey, Vec<Booted>>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn starting(&self) -> MutexGuard<'_, HashMap<PoolKey, usize>> {
        self.starting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the pool keeps runtimes at all.
    pub(crate) fn serves(&self) -> bool {
        self.size > 0
    }

    /// Get ready for the starts of a function using `use_`: its runtime's zygote, and the
    /// pool filled.
    pub(crate) fn prepare(self: &Arc<Self>, use_: &PoolUse) {
        if !self.closed.load(Ordering::SeqCst) {
            self.zygotes.ensure(&use_.runtime);
        }
        if self.serves() {
            self.fill(&use_.runtime);
        }
    }

    /// Start runtimes until `rt` has `size` ready or starting.
    fn fill(self: &Arc<Self>, rt: &Arc<Installed>) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let have = self.ready().get(&rt.key).map_or(0, Vec::len);
        let missing = {
            let mut starting = self.starting();
            let n = starting.entry(rt.key.clone()).or_default();
            let missing = self.size.saturating_sub(have + *n);
            *n += missing;
            missing
        };
        for _ in 0..missing {
            let (pool, rt) = (self.clone(), rt.clone());
            tokio::spawn(async move { pool.start_one(&rt).await });
        }
    }

    /// Start one runtime of `rt` and add it to the ready list.
    async fn start_one(self: &Arc<Self>, rt: &Arc<Installed>) {
        let id = format!(
            "{}-{}",
            rt.generic.name,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let zygote = self.zygotes.for_refill(rt);
        let booted = boot(&self.ctx, &rt.generic, &id, zygote).await;
        if let Some(n) = self.starting().get_mut(&rt.key) {
            *n = n.saturating_sub(1);
        }
        match booted {
            Ok(mut b) if self.closed.load(Ordering::SeqCst) => b.life.kill(),
            Ok(b) => {
                let idle = {
                    let mut ready = self.ready();
                    let list = ready.entry(rt.key.clone()).or_default();
                    list.push(b);
                    list.len()
                };
                self.ctx.cfg.metrics.set_warm_pool(&rt.key.0, idle as i64);
            }
            Err(e) => tracing::warn!("warm pool {}: {e}", rt.key.0),
        }
    }

    /// A pre-started runtime bound to the function of `spec` (as `use_` describes) as its
    /// instance `id`, if the pool has one. A runtime that fails its bind is discarded, never
    /// offered again.
    pub(crate) async fn take(
        self: &Arc<Self>,
        spec: &InstanceSpec,
        use_: &PoolUse,
        id: &str,
    ) -> Option<Booted> {
        loop {
            let (mut booted, idle) = {
                let mut ready = self.ready();
                let list = ready.get_mut(use_.key())?;
                (list.pop()?, list.len())
            };
            self.ctx
                .cfg
                .metrics
                .set_warm_pool(&use_.key().0, idle as i64);
            self.fill(&use_.runtime);
            if !booted.life.running() {
                continue;
            }
            match bind::bind(&bind::Pooled::of(&booted), spec, &use_.env, id).await {
                Ok(()) => {
                    self.ctx.cfg.metrics.warm_start(&spec.name);
                    return Some(booted);
                }
                Err(e) => {
                    tracing::warn!("binding pooled instance {}: {e}", booted.id);
                    booted.life.kill();
                }
            }
        }
    }

    /// The socket of the zygote of `use_`'s runtime, for a start the pool does not serve.
    pub(crate) fn zygote(&self, use_: Option<&PoolUse>) -> Option<std::path::PathBuf> {
        self.zygotes.socket(&use_?.runtime)
    }

    /// Stop filling, wait (bounded) for runtimes still starting, then stop every pooled
    /// runtime; returns their pids to wait for. After this no sandbox appears any more, so
    /// the platform's final clean-up sees them all.
    pub(crate) async fn close(&self) -> Vec<u32> {
        self.closed.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + self.ctx.cfg.ready_timeout;
        while tokio::time::Instant::now() < deadline {
            if self.starting().values().sum::<usize>() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut pids = self.zygotes.clear();
        for (_, list) in self.ready().drain() {
            for mut b in list {
                pids.extend(b.life.pid());
                b.life.kill();
            }
        }
        pids
    }
}
