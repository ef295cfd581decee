//! Reading a file of an untrusted tree (an unpacked bundle) without ever leaving it: the path
//! is resolved by the kernel beneath the tree's root with no symlinks, magic links or mount
//! crossings (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), only regular files are
//! read, and never more than a bound. The platform runs as root, so a link to a host file, a
//! FIFO or `/dev/zero` in a bundle must not reach it.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Read `rel` (relative, inside `root`) if it exists, refusing anything that is not a regular
/// file reached without symlinks, and anything larger than `limit` bytes.
pub fn read_beneath(root: &Path, rel: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK;
    let fd = match openat2(root, Path::new(rel), flags, libc::RESOLVE_NO_SYMLINKS) {
        Ok(fd) => fd,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                Some(libc::ELOOP) | Some(libc::EXDEV) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{rel} is a link or leaves the bundle"),
                )),
                _ => Err(e),
            };
        }
    };
    let file = File::from(fd);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{rel} is not a regular file"),
        ));
    }
    if meta.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{rel} is larger than {limit} bytes"),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{rel} is larger than {limit} bytes"),
        ));
    }
    Ok(Some(bytes))
}

/// Whether `rel`, followed through every symlink on its way, stays beneath `root`: the
/// kernel resolves it (`RESOLVE_BENEATH`), so chains of links are judged as the kernel will
/// follow them. A path that ends nowhere inside the tree is fine; one that leaves it, or
/// loops, is not.
pub(crate) fn stays_beneath(root: &Path, rel: &Path) -> io::Result<bool> {
    match openat2(root, rel, libc::O_PATH | libc::O_CLOEXEC, 0) {
        Ok(_) => Ok(true),
        Err(e) => match e.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ENOTDIR) => Ok(true),
            Some(libc::EXDEV) | Some(libc::ELOOP) => Ok(false),
            _ => Err(e),
        },
    }
}

/// `openat2(root, rel, flags)` resolving beneath `root`, never through magic links or into
/// other mounts, plus `resolve`. EAGAIN (a rename anywhere on the system raced a `..` step,
/// so the kernel could not vouch for it) is retried, as openat2(2) advises.
fn openat2(root: &Path, rel: &Path, flags: libc::c_int, resolve: u64) -> io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match openat2_once(root, rel, flags, resolve) {
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 16 => tries += 1,
            other => return other,
        }
    }
}

fn openat2_once(root: &Path, rel: &Path, flags: libc::c_int, resolve: u64) -> io::Result<OwnedFd> {
    let dir = File::open(root)?;
    let name = std::ffi::CString::new(rel.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path has a NUL byte"))?;
    // SAFETY: open_how is plain integers; all-zero is its documented "no options" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve =
        libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV | resolve;
    // SAFETY: openat2 reads a NUL-terminated path and an `open_how` of the size we pass; the
    // directory descriptor stays open for the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn reads_regular_files_only_and_never_outside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("b");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("outside"), b"secret").unwrap();
        symlink(dir.path().join("outside"), root.join("abs")).unwrap();
        symlink("../outside", root.join("rel")).unwrap();
        symlink("sub/f.json", root.join("inner")).unwrap();
        symlink("/dev/zero", root.join("zero")).unwrap();
        std::fs::write(root.join("big"), vec![b'x'; 100]).unwrap();

        assert_eq!(
            read_beneath(&root, "sub/f.json", 10).unwrap().unwrap(),
            b"{}"
        );
        assert!(read_beneath(&root, "missing", 10).unwrap().is_none());
        for link in ["abs", "rel", "inner", "zero", "../outside", "/etc/passwd"] {
            assert!(read_beneath(&root, link, 1 << 20).is_err(), "{link}");
        }
        assert!(read_beneath(&root, "sub", 10).is_err());
        assert!(read_beneath(&root, "big", 99).is_err());
        assert_eq!(read_beneath(&root, "big", 100).unwrap().unwrap().len(), 100);

        std::fs::create_dir(root.join("d")).unwrap();
        symlink("..", root.join("d/up")).unwrap();
        symlink("d/up/..", root.join("chain")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        symlink("nowhere", root.join("dangling")).unwrap();
        for inside in ["inner", "d/up", "dangling", "sub/f.json"] {
            assert!(stays_beneath(&root, Path::new(inside)).unwrap(), "{inside}");
        }
        for outside in ["abs", "rel", "zero", "chain", "loop"] {
            assert!(
                !stays_beneath(&root, Path::new(outside)).unwrap(),
                "{outside}"
            );
        }
    }
}
