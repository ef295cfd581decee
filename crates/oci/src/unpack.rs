//! Unpacking one layer, which is untrusted, into its own directory in the form overlayfs wants
//! for a lower layer: OCI whiteouts `.wh.NAME` become overlay whiteouts (character devices
//! 0/0) and `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr of its directory.
//!
//! Every path is resolved inside the layer ([`crate::fsops`]), so symlinks, which a rootfs
//! needs (`/bin/sh -> /bin/busybox`), are kept as they are but never followed out of it.
//! Refused, naming the entry: absolute paths, `..`, hard links to anything not earlier in the
//! same layer, device nodes (other than whiteouts), sparse files. Dropped: setuid and setgid
//! bits, extended attributes (file capabilities included). Owners and mtimes are kept. The
//! decompressed stream is metered: all of it counts against the image's budget, and tar
//! metadata (pax or long-name records, read into memory) against 1 MiB per entry.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{FileType, Mode, OFlags, Timespec, Timestamps};
use tar::EntryType;

use crate::digest::{Digest, HashReader};
use crate::fsops;
use crate::{OciError, Result};

/// Decompressed bytes tar may read between two entries (headers, pax and long-name records).
const METADATA_BUDGET: u64 = 1 << 20;
/// Tar pads every entry's data to whole 512-byte blocks.
const BLOCK: u64 = 512;
const OPAQUE: &[u8] = b".wh..wh..opq";
const WHITEOUT: &[u8] = b".wh.";

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
}

/// What one unpacked layer holds.
pub(crate) struct Unpacked {
    /// The digest of the uncompressed tar (the layer's diff id).
    pub diff_id: Digest,
    /// The digest of the blob as read.
    pub blob: Digest,
    /// Bytes of the uncompressed tar.
    pub size: u64,
    /// Tar entries.
    pub entries: u64,
}

/// Why the meter stopped a read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tripped {
    No,
    Total,
    Metadata,
}

/// A reader that fails past the image's shared budget or the current entry's allowance.
struct Metered<R> {
    inner: R,
    total: std::sync::Arc<AtomicU64>,
    allowance: Rc<Cell<u64>>,
    tripped: Rc<Cell<Tripped>>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.allowance.get();
        if left == 0 {
            self.tripped.set(Tripped::Metadata);
            return Err(io::Error::other("tar metadata over budget"));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        let took = self
            .total
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                t.checked_sub(n as u64)
            });
        if took.is_err() {
            self.tripped.set(Tripped::Total);
            return Err(io::Error::other("image over its unpacked size limit"));
        }
        self.allowance.set(left - n as u64);
        Ok(n)
    }
}

/// The layer's decompressor, over a buffer of our own: the bytes it has buffered were hashed
/// already, so none is lost to the blob's digest when it stops early.
enum Decoder<R: Read> {
    Plain(BufReader<R>),
    Gzip(Box<flate2::bufread::MultiGzDecoder<BufReader<R>>>),
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
        }
    }
}

impl<R: Read> Decoder<R> {
    fn into_inner(self) -> BufReader<R> {
        match self {
            Decoder::Plain(r) => r,
            Decoder::Gzip(r) => r.into_inner(),
        }
    }
}

/// Bounds for unpacking: the bytes left in the image's budget (shared by its layers) and
/// the entries one layer may hold.
pub(crate) struct Budget<'a> {
    pub bytes: &'a std::sync::Arc<AtomicU64>,
    pub max_bytes: u64,
    pub max_entries: u64,
}

/// Unpack the layer blob read from `src` into the new directory `dest`, computing its blob
/// digest and diff id. Returns `src` (read to its end) too. On error `dest` may hold part of
/// the layer: the caller removes it.
pub(crate) fn unpack<R: Read>(
    src: R,
    compression: Compression,
    dest: &Path,
    layer: &Digest,
    budget: &Budget,
) -> Result<(R, Unpacked)> {
    let bad = |detail: String| OciError::BadLayer {
        layer: layer.to_string(),
        detail,
    };
    let compressed = BufReader::with_capacity(1 << 16, HashReader::new(src));
    let decoder = match compression {
        Compression::None => Decoder::Plain(compressed),
        Compression::Gzip => {
            Decoder::Gzip(Box::new(flate2::bufread::MultiGzDecoder::new(compressed)))
        }
    };
    let allowance = Rc::new(Cell::new(METADATA_BUDGET));
    let tripped = Rc::new(Cell::new(Tripped::No));
    let metered = Metered {
        inner: HashReader::new(decoder),
        total: budget.bytes.clone(),
        allowance: allowance.clone(),
        tripped: tripped.clone(),
    };
    let read_err = |e: io::Error| match tripped.get() {
        Tripped::Total => OciError::TooLarge(format!(
            "image unpacks to more than {} bytes (the limit on an image's unpacked size)",
            budget.max_bytes
        )),
        Tripped::Metadata => bad(format!(
            "a tar header (pax or long-name record) is larger than {METADATA_BUDGET} bytes"
        )),
        Tripped::No if crate::error::is_disk_full(&e) => OciError::Full("unpacking a layer".into()),
        Tripped::No => bad(format!("not a valid tar stream: {e}")),
    };
    std::fs::create_dir(dest).map_err(OciError::io("create layer dir"))?;
    let root = fsops::open_root(dest).map_err(OciError::io("open layer dir"))?;
    let mut tar = tar::Archive::new(metered);
    let result = entries(
        &mut tar, &root, budget, layer, &allowance, &tripped, &read_err,
    );
    let mut metered = tar.into_inner();
    let result = result.and_then(|n| {
        allowance.set(METADATA_BUDGET);
        io::copy(&mut metered.inner, &mut io::sink()).map_err(read_err)?;
        Ok(n)
    });
    let (decoder, diff_id, size) = metered.inner.into_parts();
    let mut compressed = decoder.into_inner();
    let drained = io::copy(&mut compressed, &mut io::sink());
    let (src, blob, _) = compressed.into_inner().into_parts();
    // Content that is not what its digest says is the answer, whatever else it held.
    if drained.is_ok() && &blob != layer {
        return Err(OciError::DigestMismatch {
            what: format!("layer blob {layer}"),
            expected: layer.to_string(),
            actual: blob.to_string(),
        });
    }
    let entries = result?;
    drained.map_err(read_err)?;
    Ok((
        src,
        Unpacked {
            diff_id,
            blob,
            size,
            entries,
        },
    ))
}

/// Unpack every entry of `tar`; returns how many there were.
fn entries<R: Read>(
    tar: &mut tar::Archive<R>,
    root: &OwnedFd,
    budget: &Budget,
    layer: &Digest,
    allowance: &Cell<u64>,
    tripped: &Cell<Tripped>,
    read_err: &dyn Fn(io::Error) -> OciError,
) -> Result<u64> {
    let bad = |detail: String| OciError::BadLayer {
        layer: layer.to_string(),
        detail,
    };
    let mut entries = 0u64;
    let mut writer = Writer::new(root);
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        entries += 1;
        if entries > budget.max_entries {
            return Err(OciError::TooLarge(format!(
                "layer {layer} has more than {} entries (the limit per layer)",
                budget.max_entries
            )));
        }
        allowance.set(entry.size().div_ceil(BLOCK) * BLOCK + METADATA_BUDGET);
        writer.entry(&mut entry).map_err(|e| match e {
            EntryError::Refused(path, what) => bad(format!("entry {} {what}", path.display())),
            EntryError::Io(_, e) if tripped.get() != Tripped::No => read_err(e),
            EntryError::Io(path, e) if crate::error::is_disk_full(&e) => {
                OciError::Full(format!("unpacking {}", path.display()))
            }
            EntryError::Io(path, e) => bad(format!("cannot unpack entry {}: {e}", path.display())),
        })?;
    }
    Ok(entries)
}

/// Why one entry could not be unpacked.
enum EntryError {
    Refused(PathBuf, String),
    Io(PathBuf, io::Error),
}

/// Writes entries into one layer directory, keeping the last parent directory open (tar
/// entries come grouped by directory).
struct Writer<'a> {
    root: &'a OwnedFd,
    parent: Option<(PathBuf, OwnedFd)>,
    root_user: bool,
}

impl<'a> Writer<'a> {
    fn new(root: &'a OwnedFd) -> Self {
        Writer {
            root,
            parent: None,
            root_user: rustix::process::geteuid().is_root(),
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> std::result::Result<(), EntryError> {
        let raw = entry.path_bytes().into_owned();
        let path = clean_path(&raw).map_err(|what| {
            EntryError::Refused(PathBuf::from(OsStr::from_bytes(&raw)), what.into())
        })?;
        let io = |e: io::Error| EntryError::Io(path.clone(), e);
        let kind = entry.header().entry_type();
        let Some(name) = path.file_name().map(|n| n.as_bytes().to_vec()) else {
            // The layer's root itself ("./"): it stays as the store made it.
            return Ok(());
        };
        let parent_path = path.parent().unwrap_or(Path::new("")).to_path_buf();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        if name == OPAQUE {
            let dir = self.dir(&parent_path).map_err(io)?;
            return rustix::fs::fsetxattr(
                dir,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| io(e.into()));
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if hidden.starts_with(WHITEOUT) {
                return Ok(()); // other AUFS metadata (.wh..wh.plnk, ...): not content
            }
            let hidden = Path::new(OsStr::from_bytes(hidden)).to_path_buf();
            let dir = self.dir(&parent_path).map_err(io)?;
            let dev = rustix::fs::makedev(0, 0);
            return fsops::replace(dir, &hidden, || {
                rustix::fs::mknodat(dir, &hidden, FileType::CharacterDevice, Mode::empty(), dev)
            })
            .map_err(io);
        }
        let name = Path::new(OsStr::from_bytes(&name)).to_path_buf();
        self.write(entry, kind, &path, &parent_path, &name)
    }

    fn write<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        kind: EntryType,
        path: &Path,
        parent_path: &Path,
        name: &Path,
    ) -> std::result::Result<(), EntryError> {
        let io = |e: io::Error| EntryError::Io(path.to_path_buf(), e);
        let refuse = |what: &str| Err(EntryError::Refused(path.to_path_buf(), what.to_string()));
        let header = entry.header();
        let mode = Mode::from_raw_mode(header.mode().map_err(io)? & 0o1777);
        let (uid, gid) = (header.uid().map_err(io)?, header.gid().map_err(io)?);
        let mtime = header.mtime().map_err(io)?;
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let root = self.root;
        let root_user = self.root_user;
        let dir = self.dir(parent_path).map_err(io)?;
        match kind {
            EntryType::Regular | EntryType::Continuous => {
                let flags = OFlags::WRONLY
                    | OFlags::CREATE
                    | OFlags::EXCL
                    | OFlags::NOFOLLOW
                    | OFlags::CLOEXEC;
                let fd = fsops::replace(dir, name, || {
                    rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600))
                })
                .map_err(io)?;
                let mut file = File::from(fd);
                io::copy(entry, &mut file).map_err(io)?;
                finish_fd(&file, uid, gid, mode, mtime, root_user).map_err(io)
            }
            EntryType::Directory => {
                if fsops::kind_at(dir, name).map_err(io)? != Some(FileType::Directory) {
                    fsops::replace(dir, name, || {
                        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
                    })
                    .map_err(io)?;
                }
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| io(e.into()))?;
                finish_fd(&fd, uid, gid, mode, 0, root_user).map_err(io)
            }
            EntryType::Symlink => {
                let Some(target) = link.filter(|t| !t.is_empty()) else {
                    return refuse("is a symlink without a target");
                };
                let target = Path::new(OsStr::from_bytes(&target));
                fsops::replace(dir, name, || rustix::fs::symlinkat(target, dir, name))
                    .map_err(io)?;
                finish_at(dir, name, uid, gid, mtime, root_user).map_err(io)
            }
            EntryType::Link => match link {
                Some(target) => hard_link(root, dir, name, path, &target),
                None => refuse("is a hard link without a target"),
            },
            EntryType::Fifo => {
                fsops::replace(dir, name, || {
                    rustix::fs::mknodat(dir, name, FileType::Fifo, mode, 0)
                })
                .map_err(io)?;
                finish_at(dir, name, uid, gid, mtime, root_user).map_err(io)
            }
            EntryType::Char | EntryType::Block => refuse(&device_refused(header)),
            EntryType::GNUSparse => refuse("is a sparse file, which Virga does not unpack"),
            _ => refuse("has an entry type layers may not hold"),
        }
    }

    /// The directory `rel` (relative to the layer root), created if missing.
    fn dir(&mut self, rel: &Path) -> io::Result<&OwnedFd> {
        let cached = self.parent.as_ref().is_some_and(|(p, _)| p == rel);
        if !cached {
            let fd = fsops::make_dirs(self.root, rel)?;
            self.parent = Some((rel.to_path_buf(), fd));
        }
        match &self.parent {
            Some((_, fd)) => Ok(fd),
            None => Err(io::Error::other("no parent directory")),
        }
    }
}

/// Why a device node entry is refused, with its numbers when the header has them.
fn device_refused(header: &tar::Header) -> String {
    let dev = match (header.device_major(), header.device_minor()) {
        (Ok(Some(a)), Ok(Some(b))) => format!(" {a}:{b}"),
        _ => String::new(),
    };
    format!("is a device node{dev}: layers may not hold device nodes")
}

/// The hard link `name` in `dir` (entry `path`) to `target`, an earlier file of the layer
/// at `root`, reached through no symlink.
fn hard_link(
    root: &OwnedFd,
    dir: &OwnedFd,
    name: &Path,
    path: &Path,
    target: &[u8],
) -> std::result::Result<(), EntryError> {
    let refused = |what: String| EntryError::Refused(path.to_path_buf(), what);
    let Ok(target) = clean_path(target) else {
        return Err(refused(
            "is a hard link that leads outside the layer".into(),
        ));
    };
    let Some(target_name) = target.file_name() else {
        return Err(refused("is a hard link to the layer's root".into()));
    };
    let not_earlier = || {
        format!(
            "is a hard link to {}, which is not an earlier file of this layer",
            target.display()
        )
    };
    let from = fsops::open_literal_parent(root, &target).map_err(|_| refused(not_earlier()))?;
    fsops::replace(dir, name, || {
        rustix::fs::linkat(&from, target_name, dir, name, rustix::fs::AtFlags::empty())
    })
    .map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::EPERM) => refused(not_earlier()),
        _ => EntryError::Io(path.to_path_buf(), e),
    })
}

/// Owner, mode and mtime of a file or directory just written, through its handle: chown
/// first, since it clears setuid bits the mode no longer has anyway.
fn finish_fd<F: std::os::fd::AsFd>(
    fd: F,
    uid: u64,
    gid: u64,
    mode: Mode,
    mtime: u64,
    root_user: bool,
) -> io::Result<()> {
    if root_user {
        let (uid, gid) = ids(uid, gid)?;
        rustix::fs::fchown(&fd, Some(uid), Some(gid))?;
    }
    rustix::fs::fchmod(&fd, mode)?;
    if mtime != 0 {
        rustix::fs::futimens(&fd, &times(mtime))?;
    }
    Ok(())
}

/// Owner and mtime of a symlink or FIFO, without following it.
fn finish_at(
    dir: &OwnedFd,
    name: &Path,
    uid: u64,
    gid: u64,
    mtime: u64,
    root_user: bool,
) -> io::Result<()> {
    let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
    if root_user {
        let (uid, gid) = ids(uid, gid)?;
        rustix::fs::chownat(dir, name, Some(uid), Some(gid), flags)?;
    }
    rustix::fs::utimensat(dir, name, &times(mtime), flags)?;
    Ok(())
}

fn ids(uid: u64, gid: u64) -> io::Result<(rustix::fs::Uid, rustix::fs::Gid)> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "owner id out of range");
    let uid = u32::try_from(uid).map_err(|_| bad())?;
    let gid = u32::try_from(gid).map_err(|_| bad())?;
    Ok((
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    ))
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: i64::try_from(mtime).unwrap_or(i64::MAX),
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// A tar path as a relative path of normal components (`./` dropped); absolute paths and
/// `..` are refused.
fn clean_path(raw: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("has a '..' in its path"),
            Component::RootDir | Component::Prefix(_) => return Err("has an absolute path"),
        }
    }
    Ok(out)
}
