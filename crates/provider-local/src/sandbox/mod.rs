//! Sandbox isolation through a real OCI runtime (runc). Each instance is one container whose
//! init is the watchdog: a shared read-only root (`rootfs`), code and secrets as read-only
//! views (`mounts`), non-root, no capabilities, a seccomp allow-list (`seccomp`), its own
//! namespaces (network via `net`, kept apart by `host`'s nftables table) and cgroup limits
//! (`oci`, `cgroup`). [`Runc`] is the [`crate::isolation::Isolation`] (`contained`).
//!
//! Everything a sandbox creates is named after this platform's key (kept in the data
//! directory), so a restart after a crash finds and removes what the last run left behind:
//! containers in the runc state directory, cgroups under `/virga-KEY`, mounts, network slots.
//! Network slots and cgroups of a platform that is gone with its data directory are found
//! through its record (`host`) by the next platform that starts, and removed too.

mod cgroup;
mod contained;
mod host;
mod image;
mod mounts;
mod net;
mod oci;
mod rootfs;
mod seccomp;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::process::Command;

use crate::child;
use crate::spec::{InstanceSpec, Rootfs};
use oci::Layout;

/// The runc-based sandbox runtime of one platform.
#[derive(Debug)]
pub struct Runc {
    runc: PathBuf,
    state: PathBuf,
    rootfs: PathBuf,
    bundles: PathBuf,
    slots: PathBuf,
    watchdog: PathBuf,
    /// The watchdog tree Lambda images run (`image`): its files, and the read-only view of
    /// them sandboxes mount, made by the first sandbox that needs it.
    watchdog_tree: (PathBuf, PathBuf),
    watchdog_view: OnceLock<Result<PathBuf, String>>,
    key: String,
    net: Arc<net::Network>,
    /// Pre-made network namespaces with outbound access, so a start skips their setup.
    spare_nets: Arc<Mutex<Vec<net::NetLease>>>,
    /// Set at shutdown: no more spares are made.
    closed: Arc<AtomicBool>,
}

/// PATH inside a sandbox: the host's /usr, then Virga's additions (`python`).
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/virga/bin";

/// Network namespaces kept ready for the next sandboxes.
const SPARE_NETS: usize = 2;

/// One created (not necessarily running) sandbox.
#[derive(Debug, Clone)]
struct Sandbox {
    id: String,
    bundle: PathBuf,
    net: net::NetLease,
    /// A pooled sandbox's host slots (`code`, `secrets`), bound to a function later.
    slots: Option<PathBuf>,
    /// Where its watchdog takes handed-over client connections, as the host sees it.
    handoff: Option<PathBuf>,
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// An io::Error as "what: error".
fn io(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Runc {
    /// Set up sandboxing in `dir` (under the data directory), or say why it cannot be used.
    pub fn new(dir: &Path, watchdog: &Path) -> Result<Runc, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        let runc = find_on_path("runc").ok_or("runc is not installed (apt-get install runc)")?;
        fs::create_dir_all(dir).map_err(io("create sandbox dir"))?;
        let key = platform_key(dir)?;
        let rt = Runc {
            runc,
            state: dir.join("state"),
            rootfs: dir.join("rootfs"),
            bundles: dir.join("bundles"),
            slots: dir.join("slots"),
            watchdog: watchdog.to_path_buf(),
            watchdog_tree: (dir.join("watchdog"), dir.join("watchdog-view")),
            watchdog_view: OnceLock::new(),
            net: Arc::new(net::Network::new(&key)?),
            spare_nets: Arc::new(Mutex::new(Vec::new())),
            closed: Arc::new(AtomicBool::new(false)),
            key,
        };
        rt.remove_leftovers();
        let ready = private_dir(&rt.bundles)
            .map_err(io("create bundles dir"))
            .and_then(|()| rootfs::make(&rt.rootfs));
        if let Err(e) = ready {
            rt.net.leave();
            return Err(e);
        }
        Ok(rt)
    }

    fn runc_cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(&self.runc);
        c.arg("--root").arg(&self.state);
        c
    }

    /// Remove containers, network slots and cgroups a previous run left behind.
    fn remove_leftovers(&self) {
        if let Ok(out) = self.runc_cmd().args(["list", "-q"]).output() {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                tracing::info!("removing leftover sandbox {id}");
                let _ = self.runc_cmd().args(["delete", "-f", id]).output();
            }
        }
        self.net.release_all();
        for bundle in fs::read_dir(&self.bundles).into_iter().flatten().flatten() {
            remove_bundle(&bundle.path());
        }
        let _ = fs::remove_dir_all(&self.bundles);
        for slot in fs::read_dir(&self.slots).into_iter().flatten().flatten() {
            release_slots(&slot.path());
        }
        for dir in cgroup::platform_dirs(&self.key) {
            cgroup::remove_tree(&dir);
        }
        self.remove_watchdog_tree();
    }

    /// Create the container bundle and network of instance `id` running `spec` with the
    /// extra variables `extra`.
    fn create(
        &self,
        id: &str,
        spec: &InstanceSpec,
        extra: &[(String, String)],
    ) -> Result<Sandbox, String> {
        let cid = format!("{}-{id}", self.key);
        let bundle = self.bundles.join(&cid);
        private_dir(&bundle).map_err(io("create sandbox bundle"))?;
        let spare = if spec.outbound {
            self.spares().pop()
        } else {
            None
        };
        self.refill_spares();
        let net = match spare.map_or_else(|| self.net.allocate(spec.outbound), Ok) {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_dir_all(&bundle);
                return Err(e);
            }
        };
        let slots = spec.unbound.then(|| self.slots.join(&cid));
        // Only the platform's own watchdog takes hand-offs (not an image's process).
        let handoff = match spec.rootfs {
            Rootfs::Host => handoff_socket(&bundle),
            Rootfs::Image(_) => None,
        };
        let sandbox = Sandbox {
            id: cid,
            bundle,
            net,
            slots,
            handoff,
        };
        let made = match &sandbox.slots {
            Some(dir) => mounts::make_shared_slot(&dir.join("code"))
                .and_then(|()| mounts::make_shared_slot(&dir.join("secrets"))),
            None => Ok(()),
        };
        let written = made.and_then(|()| match &spec.rootfs {
            Rootfs::Host => self.write_config(&sandbox, spec, extra),
            Rootfs::Image(image) => self.write_image_config(&sandbox, spec, image, extra),
        });
        if let Err(e) = written {
            self.destroy(&sandbox);
            return Err(e);
        }
        Ok(sandbox)
    }

    fn spares(&self) -> std::sync::MutexGuard<'_, Vec<net::NetLease>> {
        self.spare_nets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Top up the spare network namespaces in the background.
    fn refill_spares(&self) {
        let (net, spares) = (self.net.clone(), self.spare_nets.clone());
        let closed = self.closed.clone();
        std::thread::spawn(move || loop {
            if spares.lock().unwrap_or_else(|e| e.into_inner()).len() >= SPARE_NETS {
                return;
            }
            match net.allocate(true) {
                Ok(lease) if closed.load(Ordering::SeqCst) => {
                    net.release(&lease);
                    return;
                }
                Ok(lease) => spares.lock().unwrap_or_else(|e| e.into_inner()).push(lease),
                Err(e) => {
                    tracing::warn!("preparing a spare network namespace: {e}");
                    return;
                }
            }
        });
    }

    fn write_config(
        &self,
        sb: &Sandbox,
        spec: &InstanceSpec,
        extra: &[(String, String)],
    ) -> Result<(), String> {
        let mut env = spec.env.clone();
        env.extend(extra.iter().cloned());
        env.insert("PATH".into(), SANDBOX_PATH.into());
        env.insert("HOME".into(), "/tmp".into());
        env.insert("port".into(), "8080".into());
        env.insert("bind_address".into(), "0.0.0.0".into());
        env.insert(
            "secret_mount_path".into(),
            virga_types::SECRETS_MOUNT.into(),
        );
        // What the sandbox sees of host directories are views (see `mounts`): nothing in
        // its mountinfo names the data directory or the function.
        let view = |src: &Path, name: &str| -> Result<PathBuf, String> {
            let at = sb.bundle.join(name);
            mounts::make_view(src, &at)?;
            Ok(at)
        };
        let (code, secrets, runtime) = match &sb.slots {
            Some(dir) => (
                dir.join("code"),
                dir.join("secrets"),
                Some(view(&spec.workdir, VIEWS[2])?),
            ),
            None => (
                view(&spec.workdir, VIEWS[0])?,
                view(&spec.secrets_dir, VIEWS[1])?,
                None,
            ),
        };
        let handoff = sb.handoff.as_ref().and_then(|socket| socket.parent());
        if handoff.is_some() {
            env.insert("handoff_socket".into(), oci::HANDOFF_SOCKET.into());
        }
        let layout = Layout {
            rootfs: &self.rootfs,
            watchdog: &self.watchdog,
            code: &code,
            secrets: &secrets,
            netns: &sb.net.netns,
            cgroups_path: &format!("/virga-{}/{}", self.key, sb.id),
            runtime: runtime.as_deref(),
            handoff,
        };
        write_spec(sb, &oci::build(&env, &layout, spec.limits)?)
    }

    /// The command that runs the sandbox in the foreground (`runc run`).
    fn command(&self, sb: &Sandbox) -> Command {
        let mut c = child::command(&self.runc);
        c.arg("--root")
            .arg(&self.state)
            .arg("run")
            .arg("--bundle")
            .arg(&sb.bundle)
            .arg(&sb.id);
        c
    }

    /// Kill the sandbox's processes at once.
    fn kill(&self, sb: &Sandbox) {
        let _ = self.runc_cmd().args(["kill", &sb.id, "KILL"]).output();
    }

    /// Bind a pooled sandbox to a function: its code and secrets appear read-only at
    /// /home/app and /var/openfaas/secrets, and its limits replace the pool's.
    fn bind(&self, sb: &Sandbox, spec: &InstanceSpec) -> Result<(), String> {
        let dir = sb.slots.as_ref().ok_or("not a pooled sandbox")?;
        mounts::attach_ro(&spec.workdir, &dir.join("code"))?;
        mounts::attach_ro(&spec.secrets_dir, &dir.join("secrets"))?;
        cgroup::set_limits(&self.key, &sb.id, spec.limits)
    }

    /// Remove the container, its cgroups, its network and its bundle.
    fn destroy(&self, sb: &Sandbox) {
        let _ = self.runc_cmd().args(["delete", "-f", &sb.id]).output();
        if let Some(dir) = &sb.slots {
            release_slots(dir);
        }
        self.net.release(&sb.net);
        remove_bundle(&sb.bundle);
        for dir in cgroup::platform_dirs(&self.key) {
            cgroup::remove_tree(&dir.join(&sb.id));
        }
    }

    /// Remove everything of this platform (shutdown, after instances stopped).
    fn remove_all(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.spares().clear();
        self.remove_leftovers();
        mounts::release_slot(&self.rootfs);
        self.net.leave();
    }
}

/// Whether `name` is a platform key (8 hex digits, so safe in paths).
fn is_key(name: &str) -> bool {
    name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The platform's key: random at first start, then kept in the sandbox directory.
fn platform_key(dir: &Path) -> Result<String, String> {
    let path = dir.join("key");
    if let Ok(k) = fs::read_to_string(&path) {
        let k = k.trim().to_string();
        if is_key(&k) {
            return Ok(k);
        }
    }
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom fills the buffer we pass with its exact length.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err("getrandom failed".into());
    }
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    fs::write(&path, &key).map_err(io("write sandbox key"))?;
    Ok(key)
}

/// Write a sandbox's `config.json`. It holds the function's environment: readable by root
/// only. Renamed into place, so nobody reading the bundle ever sees half of it.
fn write_spec(sb: &Sandbox, config: &oci_spec::runtime::Spec) -> Result<(), String> {
    let json = serde_json::to_vec(config).map_err(|e| format!("config.json: {e}"))?;
    let part = sb.bundle.join("config.json.part");
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&part)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &json))
        .and_then(|()| fs::rename(&part, sb.bundle.join("config.json")))
        .map_err(io("write config.json"))
}

/// The views a bundle directory may hold: code, secrets, a pooled sandbox's runtime.
const VIEWS: [&str; 3] = ["code", "secrets", "runtime"];
/// Where an image sandbox's root (its overlay) is mounted in its bundle.
const ROOTFS: &str = "rootfs";

/// Unmount a sandbox's views (and an image sandbox's root) and remove its bundle directory.
fn remove_bundle(bundle: &Path) {
    for v in VIEWS.into_iter().chain([ROOTFS, HANDOFF]) {
        mounts::release_slot(&bundle.join(v));
    }
    let _ = fs::remove_dir_all(bundle);
}

/// A bundle's directory for its watchdog's hand-off socket: a tiny tmpfs of the sandbox's
/// user (nothing of it reaches the host's disk), bind-mounted at `/virga/handoff`.
const HANDOFF: &str = "handoff";

/// Make `bundle`'s hand-off directory; the socket's host path, if it fits a socket address.
fn handoff_socket(bundle: &Path) -> Option<PathBuf> {
    let dir = bundle.join(HANDOFF);
    let socket = dir.join(Path::new(oci::HANDOFF_SOCKET).file_name()?);
    if !crate::isolation::fits_socket_address(&socket) {
        return None;
    }
    let options = std::ffi::CString::new(format!(
        "size=4k,nr_inodes=4,mode=700,uid={},gid={}",
        oci::APP_UID,
        oci::APP_UID
    ))
    .ok()?;
    let made = fs::create_dir(&dir)
        .map_err(|e| e.to_string())
        .and_then(|()| mounts::mount_tmpfs(&dir, libc::MS_NOEXEC, &options));
    match made {
        Ok(()) => Some(socket),
        Err(e) => {
            tracing::warn!("no hand-off directory ({e}): WebSockets are spliced twice");
            mounts::release_slot(&dir);
            None
        }
    }
}

/// Create `dir` (and missing parents) readable by root only.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Unmount and remove a pooled sandbox's slot directory.
fn release_slots(dir: &Path) {
    mounts::release_slot(&dir.join("code"));
    mounts::release_slot(&dir.join("secrets"));
    let _ = fs::remove_dir(dir);
}
