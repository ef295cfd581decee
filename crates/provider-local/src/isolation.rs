//! The isolation instances run under, chosen once when the provider starts: plain processes
//! ([`crate::process::Processes`]) or runc sandboxes ([`crate::sandbox::Runc`]). Nothing else
//! in the provider asks which one it is; it asks this contract.
//!
//! An isolation:
//! - says how its instances see their function's files ([`Isolation::view`]: where the code
//!   appears, who must own the secrets), applied once per deployment;
//! - prepares an instance's root filesystem and mounts and starts it ([`Isolation::start`]);
//!   the instance's watchdog then reports its address and readiness as two lines on the
//!   instance's `stdout` (read by `boot`), and [`Handle::reach`] turns the address it printed
//!   into one the gateway can reach;
//! - stops it and says why it ended ([`Life`]; OOM kills through [`Handle::oom_kills`]);
//! - attaches a function's code and secrets to a pooled instance at bind ([`Handle::attach`]),
//!   and tells the CPU time its instances use ([`Handle::cpu_seconds`]).
//!
//! An instance need not be a child process (a Wasm instance inside the platform, a microVM):
//! it needs an output stream carrying the watchdog's lines, a [`Life`] and a [`Handle`]. A
//! different root filesystem (an image's) is part of what to run, the [`InstanceSpec`]; how
//! it is presented is the isolation's business.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::io::AsyncRead;

use crate::spec::{InstanceSpec, View};

/// What instances run in (see the module's comment for the contract).
pub(crate) trait Isolation: Send + Sync {
    /// Its name, as `/system/info` shows it (`process`, `runc`).
    fn name(&self) -> &'static str;

    /// How its instances see their function's files.
    fn view(&self) -> View;

    /// Whether it runs image functions (their own root filesystem, their own init).
    fn images(&self) -> bool;

    /// Whether a runtime forked from a zygote shared by several instances may be an instance
    /// (not where each instance must be a sandbox of its own).
    fn zygotes(&self) -> bool;

    /// Prepare the instance `start` describes (root filesystem, mounts, network) and start it.
    /// Whatever it prepared is removed when the instance's [`Handle`] is dropped, and if the
    /// start fails.
    fn start(self: Arc<Self>, start: Start) -> BoxFuture<'static, Result<Started, String>>;

    /// Remove everything the isolation still holds (platform shutdown, instances stopped).
    fn shutdown(&self);
}

/// One instance to start.
pub(crate) struct Start {
    /// What it runs.
    pub(crate) spec: Arc<InstanceSpec>,
    /// Its id, unique for the platform's life.
    pub(crate) id: String,
    /// Variables added to the spec's environment (its host name, a pooled runtime's token).
    pub(crate) extra: Vec<(String, String)>,
    /// A zygote's socket to fork the runtime from; given only where [`Isolation::zygotes`].
    pub(crate) zygote: Option<PathBuf>,
}

/// An instance's output stream.
pub(crate) type Output = Box<dyn AsyncRead + Send + Unpin>;

/// A started instance.
pub(crate) struct Started {
    /// Its life, owned by whoever runs the instance.
    pub(crate) life: Box<dyn Life>,
    /// What the rest asks of it while it runs (shared with leases and the load reader).
    pub(crate) handle: Arc<dyn Handle>,
    /// Its stdout: the watchdog's listening and ready lines, then the function's output.
    pub(crate) stdout: Output,
    /// Its stderr, if it has one of its own.
    pub(crate) stderr: Option<Output>,
}

/// What the provider asks of a running instance, from any task.
pub(crate) trait Handle: Send + Sync {
    /// Where to reach the watchdog that said it listens on `printed`.
    fn reach(&self, printed: SocketAddr) -> SocketAddr;

    /// How many times the kernel's OOM killer fired in it (0 where that cannot be told).
    fn oom_kills(&self) -> u64;

    /// CPU seconds its processes used so far.
    fn cpu_seconds(&self) -> f64;

    /// The Unix socket its watchdog takes handed-over client connections on, if any.
    fn handoff(&self) -> Option<&std::path::Path> {
        None
    }

    /// Give a pooled instance the function of `spec`'s code and secrets: returns the
    /// directory the runtime loads the code from, and adjusts the bind's `env` to how the
    /// instance sees them.
    fn attach(
        &self,
        spec: &InstanceSpec,
        env: &mut BTreeMap<String, String>,
    ) -> Result<PathBuf, String>;
}

/// Whether `path` fits a Unix socket address (`sun_path` holds 108 bytes with its NUL), as
/// a hand-off socket's must.
pub(crate) fn fits_socket_address(path: &std::path::Path) -> bool {
    path.as_os_str().len() < 108
}

/// An instance's life, owned by one task at a time.
pub(crate) trait Life: Send {
    /// Wait until it ended; why it did.
    fn ended(&mut self) -> BoxFuture<'_, String>;

    /// Whether it still runs (without waiting).
    fn running(&mut self) -> bool;

    /// Ask it to stop, end it if it has not within a grace period, and wait until it ended.
    fn stop(&mut self) -> BoxFuture<'_, ()>;

    /// End it at once, without waiting.
    fn kill(&mut self);

    /// The host process to wait for at shutdown, if it is one.
    fn pid(&self) -> Option<u32>;
}
