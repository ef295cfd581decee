//! Sandboxes through a real OCI runtime (runc). Each instance is one container whose init is
//! the watchdog: read-only root, code and secrets as read-only views (`mounts`), non-root, no
//! capabilities, a seccomp allow-list (`seccomp`), its own namespaces (network via `net`,
//! kept apart by `host`'s nftables table) and cgroup limits (`oci`).
//!
//! Everything a sandbox creates is named after this platform's key (kept in the data
//! directory), so a restart after a crash finds and removes what the last run left behind:
//! containers in the runc state directory, cgroups under `/virga-KEY`, mounts, network slots.

mod host;
mod mounts;
mod net;
mod oci;
mod seccomp;

use std::fs;
use std::net::Ipv4Addr;
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::process::Command;

use crate::spec::InstanceSpec;
pub(crate) use oci::Limits;
use oci::{Layout, APP_UID, ETC_BINDS, WATCHDOG_PATH};

/// The runc-based sandbox runtime of one platform.
#[derive(Debug)]
pub struct Runc {
    runc: PathBuf,
    state: PathBuf,
    rootfs: PathBuf,
    bundles: PathBuf,
    slots: PathBuf,
    watchdog: PathBuf,
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
pub(crate) struct Sandbox {
    id: String,
    bundle: PathBuf,
    net: net::NetLease,
    /// A pooled sandbox's host slots (`code`, `secrets`), bound to a function later.
    slots: Option<PathBuf>,
}

impl Sandbox {
    /// The instance's address (its network namespace's end of the veth pair).
    pub(crate) fn ip(&self) -> Ipv4Addr {
        self.net.ip
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

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
            net: Arc::new(net::Network::new(&key)?),
            spare_nets: Arc::new(Mutex::new(Vec::new())),
            closed: Arc::new(AtomicBool::new(false)),
            key,
        };
        rt.remove_leftovers();
        let ready = private_dir(&rt.bundles)
            .map_err(io("create bundles dir"))
            .and_then(|()| make_rootfs(&rt.rootfs));
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
        for dir in self.cgroup_dirs() {
            remove_cgroup_tree(&dir);
        }
    }

    /// This platform's cgroup parent in every mounted hierarchy.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let name = format!("virga-{}", self.key);
        let root = Path::new("/sys/fs/cgroup");
        let mut dirs: Vec<PathBuf> = fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join(&name))
            .filter(|p| p.is_dir())
            .collect();
        if root.join(&name).is_dir() {
            dirs.push(root.join(&name));
        }
        dirs
    }

    /// Create the container bundle and network of instance `id` running `spec` with the
    /// extra variables `extra`.
    pub(crate) fn create(
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
        let sandbox = Sandbox {
            id: cid,
            bundle,
            net,
            slots,
        };
        let made = match &sandbox.slots {
            Some(dir) => mounts::make_shared_slot(&dir.join("code"))
                .and_then(|()| mounts::make_shared_slot(&dir.join("secrets"))),
            None => Ok(()),
        };
        if let Err(e) = made.and_then(|()| self.write_config(&sandbox, spec, extra)) {
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
        let layout = Layout {
            rootfs: &self.rootfs,
            watchdog: &self.watchdog,
            code: &code,
            secrets: &secrets,
            netns: &sb.net.netns,
            cgroups_path: &format!("/virga-{}/{}", self.key, sb.id),
            runtime: runtime.as_deref(),
        };
        let config = oci::build(&env, &layout, spec.limits)?;
        // It holds the function's environment: readable by root only. Renamed into place,
        // so nobody reading the bundle ever sees half of it.
        let json = serde_json::to_vec(&config).map_err(|e| format!("config.json: {e}"))?;
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

    /// The command that runs the sandbox in the foreground (`runc run`).
    pub(crate) fn command(&self, sb: &Sandbox) -> Command {
        let mut c = Command::new(&self.runc);
        c.arg("--root")
            .arg(&self.state)
            .arg("run")
            .arg("--bundle")
            .arg(&sb.bundle)
            .arg(&sb.id)
            .stdin(Stdio::null());
        c
    }

    /// Kill the sandbox's processes at once.
    pub(crate) fn kill(&self, sb: &Sandbox) {
        let _ = self.runc_cmd().args(["kill", &sb.id, "KILL"]).output();
    }

    /// Bind a pooled sandbox to a function: its code and secrets appear read-only at
    /// /home/app and /var/openfaas/secrets, and its limits replace the pool's.
    pub(crate) fn bind(&self, sb: &Sandbox, spec: &InstanceSpec) -> Result<(), String> {
        let dir = sb.slots.as_ref().ok_or("not a pooled sandbox")?;
        mounts::attach_ro(&spec.workdir, &dir.join("code"))?;
        mounts::attach_ro(&spec.secrets_dir, &dir.join("secrets"))?;
        self.set_limits(sb, spec.limits)
    }

    /// Write new memory and CPU limits into the sandbox's cgroups (v1 or v2).
    fn set_limits(&self, sb: &Sandbox, limits: Limits) -> Result<(), String> {
        let rel = format!("virga-{}/{}", self.key, sb.id);
        let root = Path::new("/sys/fs/cgroup");
        let write = |p: PathBuf, v: &str| -> Result<(), String> {
            fs::write(&p, v).map_err(|e| format!("write {}: {e}", p.display()))
        };
        let mem = limits.memory.to_string();
        let v1 = root.join("memory").join(&rel);
        if v1.is_dir() {
            // memory+swap may never be below memory: order the writes for either direction.
            let memsw = v1.join("memory.memsw.limit_in_bytes");
            let has_memsw = memsw.exists();
            if has_memsw {
                let _ = write(memsw.clone(), &mem);
            }
            write(v1.join("memory.limit_in_bytes"), &mem)?;
            if has_memsw {
                write(memsw, &mem)?;
            }
            write(
                root.join("cpu").join(&rel).join("cpu.cfs_period_us"),
                &oci::CPU_PERIOD.to_string(),
            )?;
            write(
                root.join("cpu").join(&rel).join("cpu.cfs_quota_us"),
                &limits.cpu_quota().to_string(),
            )?;
        } else {
            let v2 = root.join(&rel);
            write(v2.join("memory.max"), &mem)?;
            let _ = write(v2.join("memory.swap.max"), "0");
            let cpu = format!("{} {}", limits.cpu_quota(), oci::CPU_PERIOD);
            write(v2.join("cpu.max"), &cpu)?;
        }
        Ok(())
    }

    /// Remove the container, its cgroups, its network and its bundle.
    pub(crate) fn destroy(&self, sb: &Sandbox) {
        let _ = self.runc_cmd().args(["delete", "-f", &sb.id]).output();
        if let Some(dir) = &sb.slots {
            release_slots(dir);
        }
        self.net.release(&sb.net);
        remove_bundle(&sb.bundle);
        for dir in self.cgroup_dirs() {
            remove_cgroup_tree(&dir.join(&sb.id));
        }
    }

    /// How many times the kernel's OOM killer fired in the sandbox's memory cgroup.
    pub(crate) fn oom_kills(&self, sb: &Sandbox) -> u64 {
        let rel = format!("virga-{}/{}", self.key, sb.id);
        let v1 = Path::new("/sys/fs/cgroup/memory")
            .join(&rel)
            .join("memory.oom_control");
        let v2 = Path::new("/sys/fs/cgroup").join(&rel).join("memory.events");
        [v1, v2]
            .iter()
            .filter_map(|p| fs::read_to_string(p).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .max()
            .unwrap_or(0)
    }

    /// CPU seconds used by the live sandboxes of function `name` (from their cgroups).
    pub(crate) fn cpu_seconds(&self, name: &str) -> f64 {
        let prefix = format!("{}-{name}-", self.key);
        // cgroup v1 mounts the same counters under several names: take the largest sum.
        let mut best = 0.0f64;
        for parent in self.cgroup_dirs() {
            let mut total = 0.0;
            for e in fs::read_dir(&parent).into_iter().flatten().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                let Some(num) = n.strip_prefix(&prefix) else {
                    continue;
                };
                if !num.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let v2 = fs::read_to_string(e.path().join("cpu.stat"))
                    .ok()
                    .and_then(|t| {
                        t.lines()
                            .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<f64>().ok())
                    });
                let v1 = || {
                    fs::read_to_string(e.path().join("cpuacct.usage"))
                        .ok()
                        .and_then(|t| t.trim().parse::<f64>().ok())
                        .map(|ns| ns / 1000.0)
                };
                total += v2.or_else(v1).unwrap_or(0.0) / 1e6;
            }
            best = best.max(total);
        }
        best
    }

    /// Remove everything of this platform (shutdown, after instances stopped).
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.spares().clear();
        self.remove_leftovers();
        mounts::release_slot(&self.rootfs);
        self.net.leave();
    }
}

/// The platform's key: random at first start, then kept in the sandbox directory.
fn platform_key(dir: &Path) -> Result<String, String> {
    let path = dir.join("key");
    if let Ok(k) = fs::read_to_string(&path) {
        let k = k.trim().to_string();
        if k.len() == 8 && k.bytes().all(|b| b.is_ascii_hexdigit()) {
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

/// The views a bundle directory may hold: code, secrets, a pooled sandbox's runtime.
const VIEWS: [&str; 3] = ["code", "secrets", "runtime"];

/// Unmount a sandbox's views and remove its bundle directory.
fn remove_bundle(bundle: &Path) {
    for v in VIEWS {
        mounts::release_slot(&bundle.join(v));
    }
    let _ = fs::remove_dir_all(bundle);
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

/// rmdir a cgroup directory and its children, deepest first (cgroupfs has no recursive delete).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// The shared read-only root: mount points, links into /usr, and a minimal /etc.
fn make_rootfs(root: &Path) -> Result<(), String> {
    if root.exists() {
        mounts::release_slot(root);
        let _ = fs::remove_dir_all(root);
    }
    // Its own tmpfs: the sandbox's mountinfo shows its root as `/`, not the data directory.
    fs::create_dir_all(root).map_err(io("create rootfs"))?;
    mounts::mount_tmpfs(root, 0, c"size=1m,mode=755")?;
    for d in [
        "proc",
        "dev",
        "sys",
        "usr",
        "tmp",
        "home/app",
        "var/openfaas/secrets",
        "virga/bin",
        "etc",
    ] {
        fs::create_dir_all(root.join(d)).map_err(io("create rootfs"))?;
    }
    // OpenFaaS templates run `python index.py`; Debian has only python3.
    if !Path::new("/usr/bin/python").exists() {
        symlink("/usr/bin/python3", root.join("virga/bin/python")).map_err(io("link rootfs"))?;
    }
    for top in ["bin", "lib", "lib64", "sbin", "lib32", "libx32"] {
        let host = Path::new("/").join(top);
        match fs::read_link(&host) {
            Ok(target) => symlink(target, root.join(top)).map_err(io("link rootfs"))?,
            Err(_) if host.is_dir() => {
                return Err(format!(
                    "{} is a directory: sandboxes need a merged-/usr host (Debian 12 is one)",
                    host.display()
                ))
            }
            Err(_) => {}
        }
    }
    for etc in ETC_BINDS {
        let host = Path::new(etc);
        let target = root.join(etc.trim_start_matches('/'));
        if host.is_dir() {
            fs::create_dir_all(&target).map_err(io("create rootfs"))?;
        } else if host.exists() {
            fs::write(&target, "").map_err(io("create rootfs"))?;
        }
    }
    fs::write(root.join(WATCHDOG_PATH.trim_start_matches('/')), "").map_err(io("create rootfs"))?;
    fs::write(
        root.join("etc/passwd"),
        format!("root:x:0:0:root:/:/usr/sbin/nologin\napp:x:{APP_UID}:{APP_UID}:app:/home/app:/usr/sbin/nologin\n"),
    )
    .map_err(io("create rootfs"))?;
    fs::write(
        root.join("etc/group"),
        format!("root:x:0:\napp:x:{APP_UID}:\n"),
    )
    .map_err(io("create rootfs"))?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).map_err(io("chmod rootfs"))?;
    // runc gives a tmpfs the mode of the directory it is mounted on.
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))
        .map_err(io("chmod rootfs/tmp"))?;
    Ok(())
}

/// Give the sandbox user read access to a function's secrets (files 0600, dir 0700, owned by the sandbox user).
pub(crate) fn hand_over_secrets(dir: &Path) -> Result<(), String> {
    let chown = |p: &Path| {
        std::os::unix::fs::chown(p, Some(APP_UID), Some(APP_UID))
            .map_err(|e| format!("chown {}: {e}", p.display()))
    };
    for e in fs::read_dir(dir).map_err(io("read secrets dir"))?.flatten() {
        chown(&e.path())?;
        fs::set_permissions(e.path(), fs::Permissions::from_mode(0o600))
            .map_err(io("chmod secret"))?;
    }
    chown(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io("chmod secrets dir"))
}
