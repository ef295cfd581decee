//! The cgroups of a platform's sandboxes. runc makes one per sandbox, `virga-KEY/ID` in every
//! hierarchy (cgroup v1) or in the unified one (v2); the platform writes a pooled sandbox's
//! limits into them at bind, reads OOM kills and CPU time from them, and removes them. Those
//! of a platform that is gone (found by its record, see `host`) are reclaimed: their
//! processes killed, the cgroups removed.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::oci::{cpu_quota, CPU_PERIOD};
use crate::spec::Limits;

const ROOT: &str = "/sys/fs/cgroup";

/// The parent cgroup of platform `key`'s sandboxes.
fn parent(key: &str) -> String {
    format!("virga-{key}")
}

/// Platform `key`'s parent cgroup in every mounted hierarchy.
pub(super) fn platform_dirs(key: &str) -> Vec<PathBuf> {
    let name = parent(key);
    let root = Path::new(ROOT);
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

/// rmdir a cgroup directory and its children, deepest first (cgroupfs has no recursive delete).
pub(super) fn remove_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Write new memory and CPU limits into sandbox `id`'s cgroups (v1 or v2).
pub(super) fn set_limits(key: &str, id: &str, limits: Limits) -> Result<(), String> {
    let rel = format!("{}/{id}", parent(key));
    let root = Path::new(ROOT);
    let write = |p: PathBuf, v: &str| -> Result<(), String> {
        fs::write(&p, v).map_err(|e| format!("write {}: {e}", p.display()))
    };
    let mem = limits.memory.to_string();
    let quota = cpu_quota(&limits);
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
        let cpu = root.join("cpu").join(&rel);
        write(cpu.join("cpu.cfs_period_us"), &CPU_PERIOD.to_string())?;
        write(cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
    } else {
        let v2 = root.join(&rel);
        write(v2.join("memory.max"), &mem)?;
        let _ = write(v2.join("memory.swap.max"), "0");
        write(v2.join("cpu.max"), &format!("{quota} {CPU_PERIOD}"))?;
    }
    Ok(())
}

/// How many times the kernel's OOM killer fired in sandbox `id`'s memory cgroup.
pub(super) fn oom_kills(key: &str, id: &str) -> u64 {
    let rel = format!("{}/{id}", parent(key));
    let v1 = Path::new(ROOT)
        .join("memory")
        .join(&rel)
        .join("memory.oom_control");
    let v2 = Path::new(ROOT).join(&rel).join("memory.events");
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

/// CPU seconds sandbox `id`'s processes used (v2 `cpu.stat`, else v1 `cpuacct.usage`).
pub(super) fn cpu_seconds(key: &str, id: &str) -> f64 {
    let rel = format!("{}/{id}", parent(key));
    let v2 = fs::read_to_string(Path::new(ROOT).join(&rel).join("cpu.stat"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<f64>().ok())
        });
    let v1 = || {
        fs::read_to_string(
            Path::new(ROOT)
                .join("cpuacct")
                .join(&rel)
                .join("cpuacct.usage"),
        )
        .ok()
        .and_then(|t| t.trim().parse::<f64>().ok())
        .map(|ns| ns / 1000.0)
    };
    v2.or_else(v1).unwrap_or(0.0) / 1e6
}

/// Rounds of killing before the cgroups are removed regardless (processes forking meanwhile).
const KILL_ROUNDS: usize = 8;
/// How long one round waits for the processes it killed to exit.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// Kill every process left in platform `key`'s cgroups and remove them: the sandboxes of a
/// platform that is gone (killed, its data directory deleted with runc's state), which
/// nothing else would ever stop.
pub(super) fn reclaim(key: &str) {
    let dirs = platform_dirs(key);
    if dirs.is_empty() {
        return;
    }
    tracing::info!("removing the sandboxes of a platform that is gone (cgroups virga-{key})");
    let marker = format!(":/{}/", parent(key));
    for _ in 0..KILL_ROUNDS {
        let mut pids = Vec::new();
        for d in &dirs {
            members(d, &mut pids);
        }
        if pids.is_empty() {
            break;
        }
        let killed: Vec<OwnedFd> = pids.iter().filter_map(|&p| kill(p, &marker)).collect();
        wait_exited(&killed, KILL_WAIT);
    }
    for d in &dirs {
        remove_tree(d);
    }
}

/// The processes in cgroup `dir` and its children.
fn members(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            members(&e.path(), out);
        }
    }
}

/// SIGKILL process `pid` if it is in a cgroup whose path holds `marker`; returns its pidfd to
/// wait on. Through a pidfd, checked after it is open, so a pid reused meanwhile by another
/// process is never hit.
fn kill(pid: i32, marker: &str) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the descriptor was just returned to us and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let ours = fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|t| t.contains(marker));
    if !ours {
        return None;
    }
    // SAFETY: pidfd_send_signal on our descriptor with no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    (r == 0).then_some(fd)
}

/// Wait (at most `limit`) until every process of `pidfds` has exited (a pidfd turns readable).
fn wait_exited(pidfds: &[OwnedFd], limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut fds: Vec<libc::pollfd> = pidfds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while !fds.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        // SAFETY: poll on a valid array of pollfd of the given length.
        let n = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                left.as_millis().max(1) as i32,
            )
        };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
        fds.retain(|p| p.revents == 0);
    }
}
