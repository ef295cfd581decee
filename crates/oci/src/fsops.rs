//! File operations on an untrusted tree through directory handles: every path is resolved by
//! the kernel as if the tree's root were `/` (`openat2` with `RESOLVE_IN_ROOT`, no magic
//! links, no mount crossing), so a symlink in a layer, absolute or climbing with `..`, leads
//! to a place inside the layer, never outside it; the last component is then created or
//! replaced with `*at` calls that do not follow links.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{openat2, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// A directory, its last component followed too (inside the tree, as every other one).
const DIR: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

/// Open the directory `root` itself.
pub(crate) fn open_root(root: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        root,
        DIR | OFlags::NOFOLLOW,
        Mode::empty(),
    )?)
}

/// `openat2` with the flags this module lives by, plus `extra`; EAGAIN (a rename elsewhere
/// raced a `..` step) is retried, as openat2(2) advises.
fn open_in(root: &OwnedFd, rel: &Path, flags: OFlags, extra: ResolveFlags) -> io::Result<OwnedFd> {
    let resolve = ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV | extra;
    let mut tries = 0;
    loop {
        match openat2(root, rel, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            other => return other.map_err(io::Error::from),
        }
    }
}

/// The directory `rel` inside `root` (links resolved inside the tree), created with its
/// missing parents (mode 0755) where absent; a link to a missing directory gets its target
/// created inside the tree, as the kernel would resolve it in a container.
pub(crate) fn make_dirs(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    make_dirs_within(root, rel, 0)
}

fn make_dirs_within(root: &OwnedFd, rel: &Path, links: u32) -> io::Result<OwnedFd> {
    if links > 40 {
        return Err(Errno::LOOP.into());
    }
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    match open_in(root, rel, DIR, ResolveFlags::IN_ROOT) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        other => return other,
    }
    let comps: Vec<_> = rel.components().collect();
    let mut dir = open_in(root, Path::new("."), DIR, ResolveFlags::IN_ROOT)?;
    let mut prefix = PathBuf::new();
    for (i, comp) in comps.iter().enumerate() {
        let parent = prefix.clone();
        prefix.push(comp);
        match open_in(root, &prefix, DIR, ResolveFlags::IN_ROOT) {
            Ok(fd) => dir = fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match kind_at(&dir, comp.as_os_str().as_ref())? {
                    None => {
                        rustix::fs::mkdirat(&dir, comp.as_os_str(), Mode::from_raw_mode(0o755))?;
                        dir = open_in(root, &prefix, DIR, ResolveFlags::IN_ROOT)?;
                    }
                    Some(FileType::Symlink) => {
                        let target = rustix::fs::readlinkat(&dir, comp.as_os_str(), Vec::new())?;
                        let target = Path::new(std::ffi::OsStr::from_bytes(target.to_bytes()));
                        let base = if target.is_absolute() {
                            PathBuf::new()
                        } else {
                            parent
                        };
                        let mut next = base.join(target.strip_prefix("/").unwrap_or(target));
                        next.extend(&comps[i + 1..]);
                        return make_dirs_within(root, &next, links + 1);
                    }
                    Some(_) => return Err(Errno::NOTDIR.into()),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(dir)
}

/// The parent directory of `rel` and its last component, for a hard link's target: the path
/// must be a literal one inside the tree (no symlink on the way).
pub(crate) fn open_literal_parent(root: &OwnedFd, rel: &Path) -> io::Result<OwnedFd> {
    let parent = rel.parent().unwrap_or(Path::new(""));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    open_in(
        root,
        parent,
        DIR,
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
}

/// What is at `name` in `dir`, without following a link.
pub(crate) fn kind_at(dir: &OwnedFd, name: &Path) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Remove whatever is at `name` in `dir` (a whole tree if it is a directory), without
/// following links.
pub(crate) fn remove_at(dir: &OwnedFd, name: &Path) -> io::Result<()> {
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            // std's remove_dir_all walks with openat and never follows links; the magic link
            // names the directory this handle holds.
            let path = Path::new("/proc/self/fd")
                .join(dir.as_fd().as_raw_fd().to_string())
                .join(name);
            std::fs::remove_dir_all(path)
        }
        Some(_) => Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?),
    }
}

/// Create `name` in `dir` with `create`, first removing what a previous entry left there
/// (later entries of a tar replace earlier ones).
pub(crate) fn replace<T>(
    dir: &OwnedFd,
    name: &Path,
    mut create: impl FnMut() -> rustix::io::Result<T>,
) -> io::Result<T> {
    match create() {
        Err(Errno::EXIST) => {
            remove_at(dir, name)?;
            Ok(create()?)
        }
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_resolve_inside_the_tree_and_never_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let root_path = tmp.path().join("root");
        std::fs::create_dir(&root_path).unwrap();
        std::fs::create_dir(tmp.path().join("outside")).unwrap();
        symlink("/", root_path.join("abs")).unwrap();
        symlink("../../..", root_path.join("up")).unwrap();
        symlink(tmp.path().join("outside"), root_path.join("host")).unwrap();
        let root = open_root(&root_path).unwrap();
        for (i, via) in ["abs/etc", "up/etc", "host/x"].iter().enumerate() {
            let d = make_dirs(&root, Path::new(via)).unwrap();
            rustix::fs::mkdirat(&d, format!("made{i}"), Mode::from_raw_mode(0o755)).unwrap();
        }
        // `abs` and `up` both lead to the tree's own root.
        assert!(root_path.join("etc/made0").is_dir());
        assert!(root_path.join("etc/made1").is_dir());
        // `host` points at tmp/outside: inside the tree that is root/tmp.../outside.
        assert!(!tmp.path().join("outside/x").exists());
        assert!(std::fs::read_dir(tmp.path().join("outside"))
            .unwrap()
            .next()
            .is_none());
        assert!(open_literal_parent(&root, Path::new("abs/etc/f")).is_err());
    }
}
