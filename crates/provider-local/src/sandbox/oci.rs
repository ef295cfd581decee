//! The OCI runtime configuration of one sandbox, built with the `oci-spec` crate: a read-only
//! root that holds only the host's /usr (and the /etc files programs need), the function's
//! code read-only at /home/app, its own secrets read-only at /var/openfaas/secrets, a
//! size-limited /tmp and /dev/shm, a non-root user with no capabilities, no new privileges
//! and bounded open files, a seccomp allow-list (`seccomp`), its own
//! PID/mount/IPC/UTS/cgroup/network namespaces, and cgroup limits (CPU by default too).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResources,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, Process,
    ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

use crate::image::ImageRoot;
use crate::spec::Limits;
use crate::watchdog_files;

/// User and group the function runs as (not root, not a host account).
pub(crate) const APP_UID: u32 = 12000;
/// Where the function's code appears inside the sandbox (as in OpenFaaS images).
pub(crate) const CODE_PATH: &str = "/home/app";
/// Where the watchdog binary appears inside the sandbox.
pub(crate) const WATCHDOG_PATH: &str = "/virga/watchdog";
/// Host files under /etc that runtimes read (name resolution, TLS roots, time zone).
pub(crate) const ETC_BINDS: [&str; 7] = [
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/localtime",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/hosts",
];

/// CPU cores a sandbox gets when `limits.cpu` says nothing: one function cannot take every core.
pub(crate) const DEFAULT_CPU: f64 = 1.0;
/// The CFS period of the CPU limit, in microseconds.
pub(crate) const CPU_PERIOD: u64 = 100_000;
/// Open files (soft, hard) of every process in a sandbox.
const NOFILE: (u64, u64) = (1024, 4096);
/// Where POSIX shared memory lives.
const SHM: &str = "/dev/shm";
/// /dev/shm's size, taken out of the /tmp budget (so both together are `limits.tmp`).
const SHM_SIZE: u64 = 4 << 20;

/// The CFS quota per [`CPU_PERIOD`]: `limits.cpu` cores, or [`DEFAULT_CPU`] when none is given.
pub(crate) fn cpu_quota(limits: &Limits) -> i64 {
    (limits.cpu.unwrap_or(DEFAULT_CPU) * CPU_PERIOD as f64) as i64
}

/// Host paths one sandbox is made of.
pub(crate) struct Layout<'a> {
    pub(crate) rootfs: &'a Path,
    pub(crate) watchdog: &'a Path,
    pub(crate) code: &'a Path,
    pub(crate) secrets: &'a Path,
    pub(crate) netns: &'a str,
    pub(crate) cgroups_path: &'a str,
    /// For a pooled sandbox: the template runtime to run from /virga/runtime; its code and
    /// secrets mounts then follow host mounts made later (`rslave`).
    pub(crate) runtime: Option<&'a Path>,
    /// The host directory mounted writable at [`HANDOFF_DIR`], for the hand-off socket.
    pub(crate) handoff: Option<&'a Path>,
}

/// Where the watchdog's hand-off socket's directory appears.
pub(crate) const HANDOFF_DIR: &str = "/virga/handoff";
/// The watchdog's hand-off socket, as the sandbox sees it.
pub(crate) const HANDOFF_SOCKET: &str = "/virga/handoff/h.sock";

/// Where a pooled sandbox's template runtime appears.
pub(crate) const RUNTIME_PATH: &str = "/virga/runtime";

fn bind(dest: &str, src: &Path) -> Result<Mount, String> {
    bind_with(dest, src, &[])
}

fn bind_with(dest: &str, src: &Path, extra: &[&str]) -> Result<Mount, String> {
    bind_options(dest, src, &[&["ro"], extra].concat())
}

/// A bind mount of `src` at `dest`, nosuid and nodev, with `extra` options (writable
/// unless they say `ro`).
fn bind_options(dest: &str, src: &Path, extra: &[&str]) -> Result<Mount, String> {
    let mut options: Vec<String> = ["bind", "nosuid", "nodev"].map(String::from).to_vec();
    options.extend(extra.iter().map(|o| o.to_string()));
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(src)
        .options(options)
        .build()
        .map_err(|e| e.to_string())
}

fn tmpfs(dest: &str, size: u64, mode: &str, extra: &[&str]) -> Result<Mount, String> {
    let mut options = vec![
        "nosuid".to_string(),
        "nodev".into(),
        format!("size={size}"),
        format!("mode={mode}"),
    ];
    options.extend(extra.iter().map(|o| o.to_string()));
    MountBuilder::default()
        .destination(dest)
        .typ("tmpfs")
        .source("tmpfs")
        .options(options)
        .build()
        .map_err(|e| e.to_string())
}

/// The runtime spec for a sandbox running the watchdog with `env`.
pub(crate) fn build(
    env: &BTreeMap<String, String>,
    layout: &Layout<'_>,
    limits: Limits,
) -> Result<Spec, String> {
    let cwd = if layout.runtime.is_some() {
        RUNTIME_PATH
    } else {
        CODE_PATH
    };
    let user = (APP_UID, APP_UID);
    let process = process(env, vec![WATCHDOG_PATH.to_string()], cwd, user)?;
    let root = (layout.rootfs, true);
    let net = (layout.netns, layout.cgroups_path);
    assemble(process, root, mounts(layout, limits)?, net, limits)
}

/// Host paths one image sandbox is made of.
pub(crate) struct ImageLayout<'a> {
    /// The instance's overlay of the image's layers.
    pub(crate) rootfs: &'a Path,
    pub(crate) secrets: &'a Path,
    pub(crate) netns: &'a str,
    pub(crate) cgroups_path: &'a str,
    pub(crate) image: &'a ImageRoot,
    /// For a Lambda image: the platform's watchdog tree, mounted read-only at `/virga` and
    /// run (through its own loader) instead of the image's process.
    pub(crate) watchdog: Option<&'a Path>,
}

/// The runtime spec for a sandbox running an image's own process (or, for a Lambda image,
/// the platform's watchdog) with `env`: the same protections, the image's user, working
/// directory and (read-only if asked) root.
pub(crate) fn build_image(
    env: &BTreeMap<String, String>,
    layout: &ImageLayout<'_>,
    limits: Limits,
) -> Result<Spec, String> {
    let image = layout.image;
    let args = match layout.watchdog {
        Some(_) => watchdog_files::command(watchdog_files::WATCHDOG_DIR),
        None => image.args.clone(),
    };
    let process = process(env, args, &image.cwd, (image.uid, image.gid))?;
    let mut mounts = base_mounts(limits)?;
    if let Some(tree) = layout.watchdog {
        mounts.push(bind(watchdog_files::WATCHDOG_DIR, tree)?);
    }
    for etc in ["/etc/resolv.conf", "/etc/hosts"] {
        if Path::new(etc).exists() {
            mounts.push(bind(etc, Path::new(etc))?);
        }
    }
    mounts.push(bind(virga_types::SECRETS_MOUNT, layout.secrets)?);
    mounts.push(tmpfs("/tmp", limits.tmp - shm_size(limits), "1777", &[])?);
    let root = (layout.rootfs, image.read_only);
    let net = (layout.netns, layout.cgroups_path);
    assemble(process, root, mounts, net, limits)
}

/// A spec of `process` on `root` (path, read-only) with `mounts`, in the network namespace
/// and cgroup `net` names, with `limits`.
fn assemble(
    process: Process,
    root: (&Path, bool),
    mounts: Vec<Mount>,
    net: (&str, &str),
    limits: Limits,
) -> Result<Spec, String> {
    let e = |e: oci_spec::OciSpecError| e.to_string();
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
    .chain([LinuxNamespaceBuilder::default()
        .typ(LinuxNamespaceType::Network)
        .path(PathBuf::from("/run/netns").join(net.0))
        .build()])
    .collect::<Result<Vec<_>, _>>()
    .map_err(e)?;
    let defaults = oci_spec::runtime::Linux::default();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources(limits)?)
        .cgroups_path(net.1)
        .seccomp(super::seccomp::profile()?)
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .build()
        .map_err(e)?;

    let mut spec = Spec::default();
    spec.set_hostname(Some("function".into()))
        .set_process(Some(process))
        .set_root(Some(
            RootBuilder::default()
                .path(root.0)
                .readonly(root.1)
                .build()
                .map_err(e)?,
        ))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux));
    Ok(spec)
}

/// `args` as `user` (uid, gid) in `cwd`, with no capabilities, no new privileges and
/// bounded open files.
fn process(
    env: &BTreeMap<String, String>,
    args: Vec<String>,
    cwd: &str,
    user: (u32, u32),
) -> Result<Process, String> {
    let e = |e: oci_spec::OciSpecError| e.to_string();
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let no_caps = LinuxCapabilitiesBuilder::default()
        .bounding(Capabilities::new())
        .effective(Capabilities::new())
        .inheritable(Capabilities::new())
        .permitted(Capabilities::new())
        .ambient(Capabilities::new())
        .build()
        .map_err(e)?;
    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .soft(NOFILE.0)
        .hard(NOFILE.1)
        .build()
        .map_err(e)?;
    ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(user.0)
                .gid(user.1)
                .build()
                .map_err(e)?,
        )
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(no_caps)
        .no_new_privileges(true)
        .rlimits(vec![nofile])
        .build()
        .map_err(e)
}

/// /dev/shm's size, taken out of the /tmp budget.
fn shm_size(limits: Limits) -> u64 {
    SHM_SIZE.min(limits.tmp / 2)
}

/// runc's defaults without /sys/fs/cgroup, with a small noexec /dev/shm.
fn base_mounts(limits: Limits) -> Result<Vec<Mount>, String> {
    let mut mounts: Vec<Mount> = oci_spec::runtime::get_default_mounts()
        .into_iter()
        .filter(|m| {
            m.destination() != Path::new("/sys/fs/cgroup") && m.destination() != Path::new(SHM)
        })
        .collect();
    mounts.push(tmpfs(SHM, shm_size(limits), "1777", &["noexec"])?);
    Ok(mounts)
}

/// runc's defaults (without /sys/fs/cgroup, with a small /dev/shm), the read-only host parts,
/// the function's views and the private /tmp.
fn mounts(layout: &Layout<'_>, limits: Limits) -> Result<Vec<Mount>, String> {
    let mut mounts = base_mounts(limits)?;
    mounts.push(bind("/usr", Path::new("/usr"))?);
    for etc in ETC_BINDS {
        if Path::new(etc).exists() {
            mounts.push(bind(etc, Path::new(etc))?);
        }
    }
    mounts.push(bind(WATCHDOG_PATH, layout.watchdog)?);
    let follow: &[&str] = if layout.runtime.is_some() {
        &["rslave"]
    } else {
        &[]
    };
    mounts.push(bind_with(CODE_PATH, layout.code, follow)?);
    mounts.push(bind_with(
        virga_types::SECRETS_MOUNT,
        layout.secrets,
        follow,
    )?);
    if let Some(runtime) = layout.runtime {
        mounts.push(bind(RUNTIME_PATH, runtime)?);
    }
    if let Some(dir) = layout.handoff {
        mounts.push(bind_options(HANDOFF_DIR, dir, &["noexec"])?);
    }
    mounts.push(tmpfs("/tmp", limits.tmp - shm_size(limits), "1777", &[])?);
    Ok(mounts)
}

/// Memory (+swap), pids and CPU limits.
fn resources(limits: Limits) -> Result<LinuxResources, String> {
    let e = |e: oci_spec::OciSpecError| e.to_string();
    let mut memory = LinuxMemoryBuilder::default()
        .limit(limits.memory as i64)
        .swap(limits.memory as i64);
    if limits.memory == 0 {
        memory = LinuxMemoryBuilder::default();
    }
    LinuxResourcesBuilder::default()
        .memory(memory.build().map_err(e)?)
        .pids(
            LinuxPidsBuilder::default()
                .limit(limits.pids)
                .build()
                .map_err(e)?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .period(CPU_PERIOD)
                .quota(cpu_quota(&limits))
                .build()
                .map_err(e)?,
        )
        .build()
        .map_err(e)
}
