//! Unpacking an uploaded bundle, which is untrusted: the root gateway reads the tree later, and
//! sandboxes mount it. Only regular files, directories and symlinks that stay inside the tree
//! are accepted; setuid/setgid/sticky bits and group/other write bits are dropped; the unpacked
//! size and entry count are bounded, checked from each header before its data is written, and
//! the decompressed stream is metered so tar metadata (pax or long-name records, which the tar
//! crate reads into memory) cannot be a bomb either.

use std::cell::Cell;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use tar::EntryType;

use crate::beneath::stays_beneath;
use crate::{Result, StoreError};

/// Decompressed bytes tar may read between two entries (headers, pax and long-name records).
const METADATA_BUDGET: u64 = 1 << 20;
/// Tar pads every entry's data to whole 512-byte blocks.
const BLOCK: u64 = 512;

/// Bounds on what one bundle may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of entry data, summed over all entries.
    pub max_bytes: u64,
    /// Entries (files, directories, links).
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 1 << 30,
            max_entries: 100_000,
        }
    }
}

/// A reader that fails once it has handed out `budget` bytes; the unpacker refills it.
struct Metered<R> {
    inner: R,
    budget: Rc<Cell<u64>>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.budget.get();
        if left == 0 {
            return Err(io::Error::other("bundle metadata over budget"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.budget.set(left - n as u64);
        Ok(n)
    }
}

/// Unpack the gzip'd tar at `archive` into the new directory `dest`. On error `dest` may hold
/// part of it: the caller removes it.
pub(crate) fn unpack(archive: &Path, dest: &Path, limits: &UnpackLimits) -> Result<()> {
    let file = File::open(archive).map_err(StoreError::io("open bundle"))?;
    let budget = Rc::new(Cell::new(METADATA_BUDGET));
    let gz = flate2::read::GzDecoder::new(BufReader::new(file));
    let mut tar = tar::Archive::new(Metered {
        inner: gz,
        budget: budget.clone(),
    });
    tar.set_preserve_permissions(false);
    tar.set_mask(0o022);
    fs::create_dir(dest).map_err(StoreError::io("create bundle dir"))?;
    let over_budget = || {
        StoreError::BadBundle(format!(
            "a tar header (pax or long-name record) is larger than {METADATA_BUDGET} bytes"
        ))
    };
    let invalid = |e: io::Error| StoreError::BadBundle(format!("not a valid .tar.gz: {e}"));
    let mut dirs = Vec::new();
    let mut links = Vec::new();
    let (mut entries, mut bytes) = (0u64, 0u64);
    for entry in tar.entries().map_err(invalid)? {
        let mut entry = entry.map_err(|e| match budget.get() {
            0 => over_budget(),
            _ => invalid(e),
        })?;
        let path = entry.path().map_err(invalid)?.into_owned();
        entries += 1;
        bytes = bytes.saturating_add(entry.size());
        check_limits(entries, bytes, limits)?;
        let kind = entry.header().entry_type();
        check_entry(&path, kind, entry.link_name().map_err(invalid)?.as_deref())?;
        budget.set(entry.size().div_ceil(BLOCK) * BLOCK + METADATA_BUDGET);
        match kind {
            EntryType::Directory => dirs.push(entry),
            EntryType::XGlobalHeader => {}
            _ => {
                entry.unpack_in(dest).map_err(|e| unpack_err(&path, e))?;
                if kind == EntryType::Symlink {
                    links.push(path);
                }
            }
        }
    }
    // A link may point through other links: judge each as the kernel resolves it.
    for link in &links {
        if !stays_beneath(dest, link).map_err(StoreError::io("check bundle links"))? {
            return Err(entry_err(
                link,
                "is a symlink that leads outside the bundle",
            ));
        }
    }
    // Directories last, deepest first, as the tar crate does, so their modes cannot stop
    // their own contents from being written; the owner keeps rwx so the tree can be removed.
    dirs.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut dir in dirs {
        let path = dir.path().map_err(invalid)?.into_owned();
        dir.unpack_in(dest).map_err(|e| unpack_err(&path, e))?;
        let at = dest.join(&path);
        let mode = fs::symlink_metadata(&at)
            .map_err(StoreError::io("stat bundle dir"))?
            .permissions()
            .mode();
        fs::set_permissions(&at, fs::Permissions::from_mode((mode & 0o755) | 0o700))
            .map_err(StoreError::io("chmod bundle dir"))?;
    }
    Ok(())
}

fn check_limits(entries: u64, bytes: u64, limits: &UnpackLimits) -> Result<()> {
    if entries > limits.max_entries {
        return Err(StoreError::TooLarge(format!(
            "the bundle has more than {} entries (the gateway's --max-bundle-entries)",
            limits.max_entries
        )));
    }
    if bytes > limits.max_bytes {
        return Err(StoreError::TooLarge(format!(
            "the bundle unpacks to more than {} bytes (the gateway's --max-bundle-unpacked-bytes)",
            limits.max_bytes
        )));
    }
    Ok(())
}

/// Refuse entry types a bundle may not hold, paths with `..`, and symlinks whose target is
/// absolute or climbs out of the bundle.
fn check_entry(path: &Path, kind: EntryType, link: Option<&Path>) -> Result<()> {
    let what = match kind {
        EntryType::Regular
        | EntryType::Continuous
        | EntryType::Directory
        | EntryType::XGlobalHeader => return check_path(path),
        EntryType::Symlink => {
            check_path(path)?;
            return check_link(path, link);
        }
        EntryType::Link => "is a hard link (bundles may hold files, directories and symlinks)",
        EntryType::Char | EntryType::Block => "is a device node",
        EntryType::Fifo => "is a FIFO",
        EntryType::GNUSparse => "is a sparse file",
        _ => "has an entry type bundles may not hold",
    };
    Err(entry_err(path, what))
}

fn check_path(path: &Path) -> Result<()> {
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(entry_err(path, "has a '..' in its path"));
    }
    Ok(())
}

fn check_link(path: &Path, target: Option<&Path>) -> Result<()> {
    let target = target.ok_or_else(|| entry_err(path, "is a symlink without a target"))?;
    if target.is_absolute() {
        return Err(entry_err(
            path,
            &format!(
                "is a symlink to the absolute path {}: bundles may only hold relative links \
                 that stay inside them",
                target.display()
            ),
        ));
    }
    let parent = path.parent().map(PathBuf::from).unwrap_or_default();
    let mut depth = parent
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count();
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir if depth == 0 => {
                return Err(entry_err(
                    path,
                    &format!(
                        "is a symlink to {}, which leads outside the bundle",
                        target.display()
                    ),
                ))
            }
            Component::ParentDir => depth -= 1,
            _ => {}
        }
    }
    Ok(())
}

fn entry_err(path: &Path, what: &str) -> StoreError {
    StoreError::BadBundle(format!("entry {} {what}", path.display()))
}

fn unpack_err(path: &Path, e: io::Error) -> StoreError {
    if crate::is_disk_full(&e) {
        StoreError::Full(format!("unpacking {}", path.display()))
    } else {
        StoreError::BadBundle(format!("cannot unpack entry {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One tar entry: path, type, mode, link target, data.
    type Spec<'a> = (&'a str, EntryType, u32, &'a str, &'a [u8]);

    fn targz(entries: &[Spec]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        for (path, kind, mode, link, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_size(data.len() as u64);
            if kind.is_symlink() || kind.is_hard_link() {
                b.append_link(&mut h, path, link).unwrap();
            } else {
                b.append_data(&mut h, path, *data).unwrap();
            }
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn try_unpack(bytes: &[u8], limits: UnpackLimits) -> (tempfile::TempDir, Result<()>) {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.tar.gz");
        fs::write(&archive, bytes).unwrap();
        let result = unpack(&archive, &dir.path().join("out"), &limits);
        (dir, result)
    }

    fn refused(entries: &[Spec]) -> String {
        match try_unpack(&targz(entries), UnpackLimits::default()).1 {
            Err(StoreError::BadBundle(m)) => m,
            other => panic!("{entries:?}: {other:?}"),
        }
    }

    const F: EntryType = EntryType::Regular;
    const L: EntryType = EntryType::Symlink;

    #[test]
    fn refuses_links_out_hard_links_and_special_files() {
        for (entries, name) in [
            (
                vec![("virga-bundle.json", L, 0o777, "/etc/shadow", &b""[..])],
                "virga-bundle.json",
            ),
            (vec![("a/b", L, 0o777, "../../x", b"")], "a/b"),
            (
                vec![
                    ("d/up", L, 0o777, "..", b""),
                    ("c", L, 0o777, "d/up/..", b""),
                ],
                "c",
            ),
            (
                vec![
                    ("f", F, 0o644, "", b"x"),
                    ("h", EntryType::Link, 0o644, "f", b""),
                ],
                "h",
            ),
            (vec![("zero", EntryType::Char, 0o666, "", b"")], "zero"),
            (vec![("disk", EntryType::Block, 0o666, "", b"")], "disk"),
            (vec![("pipe", EntryType::Fifo, 0o666, "", b"")], "pipe"),
        ] {
            let m = refused(&entries);
            assert!(m.contains(&format!("entry {name} ")), "{m}");
        }
    }

    #[test]
    fn keeps_inner_links_and_drops_special_mode_bits() {
        let entries: Vec<Spec> = vec![
            ("bin/", EntryType::Directory, 0o1777, "", b""),
            ("bin/tool", F, 0o4755, "", b"#!/bin/sh\n"),
            ("lib/x.py", F, 0o666, "", b"x"),
            ("lib64", L, 0o777, "lib", b""),
            ("bin/up", L, 0o777, "../lib/x.py", b""),
        ];
        let (dir, result) = try_unpack(&targz(&entries), UnpackLimits::default());
        result.unwrap();
        let out = dir.path().join("out");
        let mode = |p: &str| fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode("bin"), 0o755);
        assert_eq!(mode("bin/tool"), 0o755);
        assert_eq!(mode("lib/x.py"), 0o644);
        assert_eq!(fs::read(out.join("lib64/x.py")).unwrap(), b"x");
        assert_eq!(fs::read(out.join("bin/up")).unwrap(), b"x");
    }

    #[test]
    fn bounds_unpacked_bytes_entries_and_metadata() {
        let data = vec![0u8; 4096];
        let two: Vec<Spec> = vec![("a", F, 0o644, "", &data), ("b", F, 0o644, "", &data)];
        let limits = UnpackLimits {
            max_bytes: 8191,
            max_entries: 10,
        };
        let (_d, r) = try_unpack(&targz(&two), limits);
        assert!(
            matches!(&r, Err(StoreError::TooLarge(m)) if m.contains("8191")),
            "{r:?}"
        );
        let limits = UnpackLimits {
            max_bytes: 1 << 20,
            max_entries: 1,
        };
        let (_d, r) = try_unpack(&targz(&two), limits);
        assert!(
            matches!(&r, Err(StoreError::TooLarge(m)) if m.contains("entries")),
            "{r:?}"
        );

        // A pax record the tar crate would read into memory whole.
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let huge = "x".repeat(8 << 20);
        b.append_pax_extensions([("comment", huge.as_bytes())])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "f", &b"x"[..]).unwrap();
        let bytes = b.into_inner().unwrap().finish().unwrap();
        let (_d, r) = try_unpack(&bytes, UnpackLimits::default());
        assert!(
            matches!(&r, Err(StoreError::BadBundle(m)) if m.contains("pax")),
            "{r:?}"
        );
    }
}
