//! The OCI runtime configuration of one sandbox, built with the `oci-spec` crate: a read-only
//! root that holds only the host's /usr (and the /etc files programs need), the function's
//! code read-only at /home/app, its own secrets read-only at /var/openfaas/secrets, a
//! size-limited /tmp, a non-root user with no capabilities and no new privileges, a seccomp
//! deny-list, its own PID/mount/IPC/UTS/cgroup/network namespaces, and cgroup limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capabilities, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, UserBuilder,
};

/// User and group the function runs as (not root, not a host account).
pub(crate) const APP_UID: u32 = 12000;
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

/// Syscalls a function has no business making; they fail with EPERM.
const DENIED_SYSCALLS: [&str; 39] = [
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "move_mount",
    "name_to_handle_at",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "unshare",
];

/// Resource limits of one sandbox.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Memory in bytes (also the memory+swap limit, so it cannot swap).
    pub(crate) memory: u64,
    /// CPU cores, if limited.
    pub(crate) cpu: Option<f64>,
    /// Most processes and threads.
    pub(crate) pids: i64,
    /// Size of the private /tmp in bytes.
    pub(crate) tmp: u64,
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
}

/// Where a pooled sandbox's template runtime appears.
pub(crate) const RUNTIME_PATH: &str = "/virga/runtime";

fn bind(dest: &str, src: &Path) -> Result<Mount, String> {
    bind_with(dest, src, &[])
}

fn bind_with(dest: &str, src: &Path, extra: &[&str]) -> Result<Mount, String> {
    let mut options: Vec<String> = ["bind", "ro", "nosuid", "nodev"].map(String::from).to_vec();
    options.extend(extra.iter().map(|o| o.to_string()));
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(src)
        .options(options)
        .build()
        .map_err(|e| e.to_string())
}

fn tmpfs(dest: &str, size: u64, mode: &str) -> Result<Mount, String> {
    MountBuilder::default()
        .destination(dest)
        .typ("tmpfs")
        .source("tmpfs")
        .options(vec![
            "nosuid".into(),
            "nodev".into(),
            format!("size={size}"),
            format!("mode={mode}"),
        ])
        .build()
        .map_err(|e| e.to_string())
}

fn seccomp_arches() -> Vec<Arch> {
    match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        _ => Vec::new(),
    }
}

/// The runtime spec for a sandbox running the watchdog with `env`.
pub(crate) fn build(
    env: &BTreeMap<String, String>,
    layout: &Layout<'_>,
    limits: Limits,
) -> Result<Spec, String> {
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
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(APP_UID)
                .gid(APP_UID)
                .build()
                .map_err(e)?,
        )
        .args(vec![WATCHDOG_PATH.to_string()])
        .env(env)
        .cwd(if layout.runtime.is_some() {
            RUNTIME_PATH
        } else {
            "/home/app"
        })
        .capabilities(no_caps)
        .no_new_privileges(true)
        .build()
        .map_err(e)?;

    let mut mounts: Vec<Mount> = oci_spec::runtime::get_default_mounts()
        .into_iter()
        .filter(|m| m.destination() != Path::new("/sys/fs/cgroup"))
        .collect();
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
    mounts.push(bind_with("/home/app", layout.code, follow)?);
    mounts.push(bind_with(
        virga_types::SECRETS_MOUNT,
        layout.secrets,
        follow,
    )?);
    if let Some(runtime) = layout.runtime {
        mounts.push(bind(RUNTIME_PATH, runtime)?);
    }
    mounts.push(tmpfs("/tmp", limits.tmp, "1777")?);

    let mut memory = LinuxMemoryBuilder::default()
        .limit(limits.memory as i64)
        .swap(limits.memory as i64);
    if limits.memory == 0 {
        memory = LinuxMemoryBuilder::default();
    }
    let mut resources = LinuxResourcesBuilder::default()
        .memory(memory.build().map_err(e)?)
        .pids(
            LinuxPidsBuilder::default()
                .limit(limits.pids)
                .build()
                .map_err(e)?,
        );
    if let Some(cores) = limits.cpu {
        let period: u64 = 100_000;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .period(period)
                .quota((cores * period as f64) as i64)
                .build()
                .map_err(e)?,
        );
    }
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
        .path(PathBuf::from("/run/netns").join(layout.netns))
        .build()])
    .collect::<Result<Vec<_>, _>>()
    .map_err(e)?;
    let seccomp = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(seccomp_arches())
        .syscalls(vec![LinuxSyscallBuilder::default()
            .names(DENIED_SYSCALLS.map(String::from).to_vec())
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::EPERM as u32)
            .build()
            .map_err(e)?])
        .build()
        .map_err(e)?;
    let defaults = oci_spec::runtime::Linux::default();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(e)?)
        .cgroups_path(layout.cgroups_path)
        .seccomp(seccomp)
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .build()
        .map_err(e)?;

    let mut spec = Spec::default();
    spec.set_hostname(Some("function".into()))
        .set_process(Some(process))
        .set_root(Some(
            RootBuilder::default()
                .path(layout.rootfs)
                .readonly(true)
                .build()
                .map_err(e)?,
        ))
        .set_mounts(Some(mounts))
        .set_linux(Some(linux));
    Ok(spec)
}
