//! The figure groups, one module each, and what they share: the run settings (`--quick`
//! or full), the located binaries, the wrk driver and a scratch directory. A group fills
//! one report section; adding a group means adding a module and a line to `GROUPS`.

pub mod classic;
pub mod connections;
pub mod gateway;
pub mod images;
pub mod lambda;
pub mod queue;
pub mod sandbox;
pub mod scaling;
pub mod triggers;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::platform::Bins;
use crate::report::Section;
use crate::runner::{Load, Stats, Wrk};

/// Request body every benchmark request carries.
pub const BODY: &str = "hello";

/// Introduction of docs/benchmarks.md.
pub const INTRO: &str = "\
`virga-bench` measures Virga on the machine it runs on and prints every figure as a \
ratio to a baseline measured in the same run, on the same machine, a moment apart: \
absolute numbers vary from machine to machine, the ratios much less. Load comes from \
[wrk](https://github.com/wg/wrk) over loopback HTTP/1.1 keep-alive connections, each \
request a `POST` with the 5-byte body `hello`. Throughput runs use `wrk -t2 -c32`; \
per-request latency runs use `wrk -t1 -c1` (one request at a time). Every path is \
warmed up with a discarded wrk run before it is measured. The benchmark, wrk and the \
system under test share the same cores, as they would on a small self-hosted box. \
`virga up` runs with `--isolation process` (plain-process instances, like the standalone \
watchdogs that serve as baselines), so the comparisons isolate the gateway; \
`virga-bench --isolation runc` measures through runc sandboxes instead.";

/// A figure group.
pub struct Group {
    /// Name for `--only`.
    pub name: &'static str,
    /// Section heading.
    pub title: &'static str,
    /// Markdown explanation of its figures.
    pub about: &'static str,
    /// Measures and fills the section.
    pub run: fn(&Ctx, &mut Section) -> Result<()>,
}

/// All groups, in run order.
pub const GROUPS: &[Group] = &[
    Group {
        name: gateway::NAME,
        title: gateway::TITLE,
        about: gateway::ABOUT,
        run: gateway::run,
    },
    Group {
        name: classic::NAME,
        title: classic::TITLE,
        about: classic::ABOUT,
        run: classic::run,
    },
    Group {
        name: sandbox::NAME,
        title: sandbox::TITLE,
        about: sandbox::ABOUT,
        run: sandbox::run,
    },
    Group {
        name: queue::NAME,
        title: queue::TITLE,
        about: queue::ABOUT,
        run: queue::run,
    },
    Group {
        name: triggers::NAME,
        title: triggers::TITLE,
        about: triggers::ABOUT,
        run: triggers::run,
    },
    Group {
        name: images::NAME,
        title: images::TITLE,
        about: images::ABOUT,
        run: images::run,
    },
    Group {
        name: lambda::NAME,
        title: lambda::TITLE,
        about: lambda::ABOUT,
        run: lambda::run,
    },
    Group {
        name: scaling::NAME,
        title: scaling::TITLE,
        about: scaling::ABOUT,
        run: scaling::run,
    },
    Group {
        name: connections::NAME,
        title: connections::TITLE,
        about: connections::ABOUT,
        run: connections::run,
    },
];

/// How long and how hard to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Throughput runs.
    pub throughput: Load,
    /// Per-request latency runs (one connection).
    pub latency: Load,
    /// Length of the discarded warm-up run before each measured path.
    pub warmup: Duration,
    /// Iterations of in-process loops such as the bare fork/exec baseline.
    pub iterations: usize,
}

impl Settings {
    /// Full runs (about six minutes in all) or `--quick` ones (a smoke test).
    pub fn new(quick: bool) -> Settings {
        let secs = |full: u64, short: u64| Duration::from_secs(if quick { short } else { full });
        Settings {
            throughput: Load {
                threads: 2,
                connections: 32,
                duration: secs(6, 2),
            },
            latency: Load {
                threads: 1,
                connections: 1,
                duration: secs(5, 2),
            },
            warmup: secs(2, 1),
            iterations: if quick { 300 } else { 2000 },
        }
    }
}

/// What a group gets to work with.
pub struct Ctx {
    /// Binaries under test.
    pub bins: Bins,
    /// Load generator.
    pub wrk: Wrk,
    /// Run lengths.
    pub settings: Settings,
    /// Scratch directory of this run.
    pub work: PathBuf,
    /// How `virga up` isolates instances (`process` compares like with like: the
    /// standalone watchdogs are plain processes too).
    pub isolation: String,
}

impl Ctx {
    /// A fresh scratch subdirectory.
    pub fn dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.work.join(name);
        std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        Ok(d)
    }

    /// A discarded wrk run of shape `load` but warm-up length.
    pub fn warm(&self, url: &str, load: &Load) -> Result<()> {
        let warm = Load {
            duration: self.settings.warmup,
            ..load.clone()
        };
        self.wrk.run(url, &warm).map(|_| ())
    }

    /// A measured wrk run.
    pub fn load(&self, url: &str, load: &Load) -> Result<Stats> {
        self.wrk.run(url, load)
    }
}

/// `wrk -tT -cC` for labels.
pub fn shape(load: &Load) -> String {
    format!("wrk -t{} -c{}", load.threads, load.connections)
}
