//! Host-side mounts that sandboxes see. Every directory of the host a sandbox gets (its code,
//! its secrets, a pooled sandbox's runtime) reaches it as a read-only overlay whose layers are
//! the directory and an empty one, both named by `/proc/self/fd/N`: a bind mount would show
//! the source's path inside its filesystem in `/proc/self/mountinfo` (the data directory,
//! the function's name), an overlay shows `/` and those fd paths.
//!
//! A pooled sandbox is created with its code and secrets directories bind-mounted from host
//! "slots": small empty tmpfs mounts that are shared mount points (the sandbox's copies are
//! slaves), so binding it to a function later is one overlay mounted on each slot, which
//! propagates in. The overlay is read-only, nosuid and nodev from the start: a read-only
//! remount after the fact would not propagate.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;

/// An always-empty directory: the second layer of every view (overlayfs needs two lower
/// layers when it has no upper one).
const EMPTY_DIR: &str = "/run/virga-empty";

fn cpath(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("{} has a NUL byte", p.display()))
}

fn last_err(what: &str, p: &Path) -> String {
    format!(
        "{what} {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    )
}

/// Mount a fresh tmpfs on `at` with `flags` and `options`.
pub(crate) fn mount_tmpfs(at: &Path, flags: libc::c_ulong, options: &CStr) -> Result<(), String> {
    let c = cpath(at)?;
    // SAFETY: mount(2) with valid NUL-terminated strings; flags are plain integers.
    let r = unsafe {
        libc::mount(
            c"virga".as_ptr(),
            c.as_ptr(),
            c"tmpfs".as_ptr(),
            flags | libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(last_err("mount a tmpfs on", at));
    }
    Ok(())
}

/// Create `slot` as an empty read-only tmpfs that is a shared mount point of its own.
pub(crate) fn make_shared_slot(slot: &Path) -> Result<(), String> {
    std::fs::create_dir_all(slot).map_err(|e| format!("create {}: {e}", slot.display()))?;
    mount_tmpfs(slot, libc::MS_RDONLY | libc::MS_NOEXEC, c"size=4k,mode=755")?;
    let c = cpath(slot)?;
    // SAFETY: mount(2) with a valid path; the other arguments are unused for MS_SHARED.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(last_err("make shared", slot));
    }
    Ok(())
}

/// The empty directory's descriptor (made once per process; it must stay empty).
fn empty_layer() -> Result<&'static OwnedFd, String> {
    static EMPTY: OnceLock<Result<OwnedFd, String>> = OnceLock::new();
    EMPTY
        .get_or_init(|| {
            let dir = Path::new(EMPTY_DIR);
            let fail = |e: std::io::Error| format!("{EMPTY_DIR}: {e}");
            match std::fs::create_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(fail(e)),
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).map_err(fail)?;
            let fd = std::fs::File::open(dir).map_err(fail)?;
            if std::fs::read_dir(dir).map_err(fail)?.next().is_some() {
                return Err(format!("{EMPTY_DIR} must be empty"));
            }
            Ok(fd.into())
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Mount a read-only, nosuid, nodev view of `src` on `at` (see the module's comment).
pub(crate) fn attach_ro(src: &Path, at: &Path) -> Result<(), String> {
    let empty = empty_layer()?;
    let lower = std::fs::File::open(src).map_err(|e| format!("open {}: {e}", src.display()))?;
    let options = CString::new(format!(
        "lowerdir=/proc/self/fd/{}:/proc/self/fd/{}",
        lower.as_raw_fd(),
        empty.as_raw_fd()
    ))
    .map_err(|_| "overlay options hold a NUL byte".to_string())?;
    let c = cpath(at)?;
    // SAFETY: mount(2) with valid NUL-terminated strings; both descriptors named in the
    // options stay open until it returns.
    let r = unsafe {
        libc::mount(
            c"virga".as_ptr(),
            c.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(last_err("mount a read-only view on", at));
    }
    Ok(())
}

/// Mount an instance's root on `at`: an overlay of an image's unpacked `layers` (bottom
/// first; read-only lower dirs, shared by every instance) with `upper` and `work` (the
/// instance's own, empty) taking its writes. Every directory is named by a descriptor, so
/// the sandbox's mountinfo shows no host path.
pub(crate) fn mount_image_root(
    layers: &[std::path::PathBuf],
    upper: &Path,
    work: &Path,
    at: &Path,
) -> Result<(), String> {
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| format!("open {}: {e}", p.display()));
    let lowers = layers
        .iter()
        .rev()
        .map(|p| open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let (upper, work) = (open(upper)?, open(work)?);
    let fd = |f: &std::fs::File| format!("/proc/self/fd/{}", f.as_raw_fd());
    let lowerdir: Vec<String> = lowers.iter().map(fd).collect();
    let options = CString::new(format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        fd(&upper),
        fd(&work)
    ))
    .map_err(|_| "overlay options hold a NUL byte".to_string())?;
    let c = cpath(at)?;
    // SAFETY: mount(2) with valid NUL-terminated strings; every descriptor named in the
    // options stays open until it returns.
    let r = unsafe {
        libc::mount(
            c"virga".as_ptr(),
            c.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    };
    if r != 0 {
        return Err(last_err("mount an image root on", at));
    }
    Ok(())
}

/// Create `at` and mount a view of `src` on it (a sandbox's own code and secrets).
pub(crate) fn make_view(src: &Path, at: &Path) -> Result<(), String> {
    std::fs::create_dir_all(at).map_err(|e| format!("create {}: {e}", at.display()))?;
    attach_ro(src, at)
}

/// Unmount everything stacked on `slot` (attached views and the slot's own tmpfs; or a
/// sandbox's view, or the rootfs), then remove the directory if it is empty.
pub(crate) fn release_slot(slot: &Path) {
    if let Ok(c) = cpath(slot) {
        for _ in 0..8 {
            // SAFETY: umount2 on a valid path; it fails harmlessly when nothing is mounted.
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                break;
            }
        }
    }
    // rmdir, never a recursive delete: if anything were still mounted, it must survive.
    let _ = std::fs::remove_dir(slot);
}
