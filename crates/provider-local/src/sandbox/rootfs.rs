//! The root filesystem every sandbox of a platform shares, read-only: an empty skeleton on a
//! tmpfs of its own, links into the host's /usr, mount points for the host's /etc files and
//! the watchdog, and a minimal /etc/passwd and /etc/group.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::oci::{APP_UID, ETC_BINDS, WATCHDOG_PATH};
use super::{io, mounts};

/// The shared read-only root: mount points, links into /usr, and a minimal /etc.
pub(super) fn make(root: &Path) -> Result<(), String> {
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
        "virga/handoff",
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
