//! Host-side mounts that reach into running sandboxes. A pooled sandbox is created with its
//! code and secrets directories bind-mounted from host "slots" that are shared mount points
//! (the sandbox's copies are slaves), so binding it to a function later is one host mount per
//! slot, which propagates in. Those mounts are made read-only before they are attached
//! (`open_tree` + `mount_setattr` + `move_mount`): a read-only remount after the fact would
//! not propagate, and the sandbox would get a writable copy of the function's code.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

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

/// Create `slot` and make it a shared mount point of its own.
pub(crate) fn make_shared_slot(slot: &Path) -> Result<(), String> {
    std::fs::create_dir_all(slot).map_err(|e| format!("create {}: {e}", slot.display()))?;
    let c = cpath(slot)?;
    // SAFETY: mount(2) with valid NUL-terminated paths; flags are plain integers.
    unsafe {
        if libc::mount(
            c.as_ptr(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) != 0
        {
            return Err(last_err("bind", slot));
        }
        if libc::mount(
            std::ptr::null(),
            c.as_ptr(),
            std::ptr::null(),
            libc::MS_SHARED,
            std::ptr::null(),
        ) != 0
        {
            return Err(last_err("make shared", slot));
        }
    }
    Ok(())
}

/// Attach a read-only, nosuid, nodev view of `src` on `slot`.
pub(crate) fn attach_ro(src: &Path, slot: &Path) -> Result<(), String> {
    let (csrc, cslot) = (cpath(src)?, cpath(slot)?);
    let empty = c"";
    // SAFETY: raw syscalls with valid paths, a properly sized mount_attr, and a descriptor we
    // own and close.
    unsafe {
        let fd = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            csrc.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        );
        if fd < 0 {
            return Err(last_err("open_tree", src));
        }
        let fd = fd as libc::c_int;
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        let set = libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        );
        if set != 0 {
            let e = last_err("mount_setattr", src);
            libc::close(fd);
            return Err(e);
        }
        let moved = libc::syscall(
            libc::SYS_move_mount,
            fd,
            empty.as_ptr(),
            libc::AT_FDCWD,
            cslot.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        );
        libc::close(fd);
        if moved != 0 {
            return Err(last_err("move_mount onto", slot));
        }
    }
    Ok(())
}

/// Unmount everything stacked on `slot` (attached views and the slot's own bind), then
/// remove the directory if it is empty.
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
