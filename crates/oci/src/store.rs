//! The image store on disk, shared by every image and function:
//!
//! - `blobs/sha256/HEX`: blobs as the registry serves them (compressed layers, configs,
//!   manifests, indexes), each checked against its digest before it is kept;
//! - `layers/HEX/rootfs`: a layer unpacked once, keyed by its diff id (the digest of the
//!   uncompressed tar), ready to be an overlayfs lower dir; `layers/HEX/layer.json` its size;
//! - `images/HEX.json`: one pulled or built image (keyed by the digest its references point
//!   at): its platform manifest, config, layers and the references seen for it;
//! - `tmp/`: work in progress, named by process id.
//!
//! Blobs and layers appear atomically (written under `tmp/`, synced, renamed), so a kill -9
//! or a crash never leaves half of one in place; the next open removes what dead processes
//! left in `tmp/`.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::{OciError, Result};

/// One layer of a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    /// The blob's digest (compressed, as in the manifest).
    pub blob: Digest,
    /// The uncompressed tar's digest (as in the config).
    pub diff_id: Digest,
    /// The blob's media type.
    pub media_type: String,
    /// The blob's size in bytes.
    pub size: u64,
}

/// One stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    /// What its references point at: an index, or the manifest itself.
    pub digest: Digest,
    /// The platform's image manifest.
    pub manifest: Digest,
    /// The image config.
    pub config: Digest,
    /// Bottom layer first.
    pub layers: Vec<LayerRecord>,
    /// References it was pulled, built or pushed as.
    pub references: BTreeSet<String>,
}

/// What `layers/HEX/layer.json` holds.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct LayerInfo {
    /// Bytes of the uncompressed tar.
    pub size: u64,
    /// Tar entries.
    pub entries: u64,
}

/// The directory tree of the store.
#[derive(Clone)]
pub(crate) struct Store {
    root: PathBuf,
    seq: Arc<AtomicU64>,
}

impl Store {
    /// Open (or create, mode 0700) the store at `root`, clearing what dead processes left in
    /// `tmp/`.
    pub(crate) fn open(root: &Path) -> Result<Store> {
        for sub in ["blobs/sha256", "layers", "images", "tmp"] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root.join(sub))
                .map_err(OciError::io(format!("create {}", root.join(sub).display())))?;
        }
        fs::set_permissions(root, fs::Permissions::from_mode(0o700))
            .map_err(OciError::io("chmod image store"))?;
        let store = Store {
            root: root.to_path_buf(),
            seq: Arc::new(AtomicU64::new(0)),
        };
        store.clear_tmp()?;
        Ok(store)
    }

    fn clear_tmp(&self) -> Result<()> {
        let tmp = self.root.join("tmp");
        let entries = fs::read_dir(&tmp).map_err(OciError::io("read image store tmp"))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.split('-').next()?.parse::<i32>().ok());
            // Signal 0 only asks whether the process exists.
            let alive = pid
                .and_then(rustix::process::Pid::from_raw)
                .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
            if !alive {
                let path = entry.path();
                let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
            }
        }
        Ok(())
    }

    /// The store's root directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh path under `tmp/` for work in progress.
    pub(crate) fn temp_path(&self, what: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}-{what}", std::process::id()))
    }

    /// Where blob `d` is kept.
    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Whether blob `d` is kept.
    pub(crate) fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Blob `d` (at most `limit` bytes), checked again against its digest; `None` if absent.
    pub(crate) fn read_blob(&self, d: &Digest, limit: u64) -> Result<Option<Vec<u8>>> {
        let path = self.blob_path(d);
        match fs::metadata(&path) {
            Ok(m) if m.len() > limit => {
                return Err(OciError::TooLarge(format!(
                    "blob {d} is larger than {limit} bytes"
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(OciError::io(format!("stat blob {d}"))(e)),
        }
        let bytes = fs::read(&path).map_err(OciError::io(format!("read blob {d}")))?;
        let got = Digest::of(&bytes);
        if &got != d {
            // Changed on disk: drop it so the next pull fetches it again.
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// Keep `bytes` as blob `d`, refusing them unless they hash to `d`.
    pub(crate) fn write_blob(&self, what: &str, d: &Digest, bytes: &[u8]) -> Result<()> {
        let got = Digest::of(bytes);
        if &got != d {
            return Err(OciError::DigestMismatch {
                what: what.to_string(),
                expected: d.to_string(),
                actual: got.to_string(),
            });
        }
        if self.has_blob(d) {
            return Ok(());
        }
        let tmp = self.temp_path("blob");
        self.write_file(&tmp, bytes)?;
        self.commit_blob(&tmp, d)
    }

    /// Move the checked blob at `tmp` into place as `d`.
    pub(crate) fn commit_blob(&self, tmp: &Path, d: &Digest) -> Result<()> {
        fs::rename(tmp, self.blob_path(d)).map_err(OciError::io(format!("store blob {d}")))
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let ctx = || format!("write {}", path.display());
        let mut f = fs::File::create(path).map_err(OciError::io(ctx()))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(OciError::io(ctx()))
    }

    /// The directory of the layer with diff id `d`.
    pub(crate) fn layer_dir(&self, d: &Digest) -> PathBuf {
        self.root.join("layers").join(d.hex())
    }

    /// What the unpacked layer `d` holds, if it is complete.
    pub(crate) fn layer_info(&self, d: &Digest) -> Option<LayerInfo> {
        let bytes = fs::read(self.layer_dir(d).join("layer.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Write `layer.json` into the layer being unpacked in `tmp`.
    pub(crate) fn write_layer_info(&self, tmp: &Path, info: LayerInfo) -> Result<()> {
        let json = serde_json::to_vec(&info).map_err(|e| OciError::BadInput(e.to_string()))?;
        let path = tmp.join("layer.json");
        fs::write(&path, json).map_err(OciError::io(format!("write {}", path.display())))
    }

    /// Flush the file system `path` is on: one call instead of an fsync per unpacked file.
    pub(crate) fn sync(&self, path: &Path) -> Result<()> {
        let dir = fs::File::open(path).map_err(OciError::io("open layer"))?;
        rustix::fs::syncfs(&dir).map_err(|e| OciError::io("sync layer")(e.into()))
    }

    /// Move the layer unpacked in `tmp` (its `rootfs/` and `layer.json`) into place as `d`;
    /// a concurrent unpack that got there first wins.
    pub(crate) fn commit_layer(&self, tmp: &Path, d: &Digest) -> Result<()> {
        match fs::rename(tmp, self.layer_dir(d)) {
            Ok(()) => Ok(()),
            Err(_) if self.layer_info(d).is_some() => {
                let _ = fs::remove_dir_all(tmp);
                Ok(())
            }
            Err(e) => Err(OciError::io(format!("store layer {d}"))(e)),
        }
    }

    /// The record of image `d`, if stored.
    pub(crate) fn record(&self, d: &Digest) -> Result<Option<ImageRecord>> {
        let path = self.root.join("images").join(format!("{}.json", d.hex()));
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| OciError::BadInput(format!("{} is damaged: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(OciError::io(format!("read {}", path.display()))(e)),
        }
    }

    /// Store `r`, keeping the references an older record of it had.
    pub(crate) fn put_record(&self, r: &ImageRecord) -> Result<ImageRecord> {
        let mut r = r.clone();
        if let Some(old) = self.record(&r.digest)? {
            r.references.extend(old.references);
        }
        let json = serde_json::to_vec_pretty(&r).map_err(|e| OciError::BadInput(e.to_string()))?;
        let tmp = self.temp_path("record");
        self.write_file(&tmp, &json)?;
        let path = self
            .root
            .join("images")
            .join(format!("{}.json", r.digest.hex()));
        fs::rename(&tmp, path).map_err(OciError::io("store image record"))?;
        Ok(r)
    }

    /// Every stored image record.
    pub(crate) fn records(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for hex in self.names("images")? {
            let Some(d) = hex
                .strip_suffix(".json")
                .and_then(|h| Digest::parse(&format!("sha256:{h}")))
            else {
                continue;
            };
            if let Some(r) = self.record(&d)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// Remove image record `d`.
    pub(crate) fn remove_record(&self, d: &Digest) -> Result<()> {
        let path = self.root.join("images").join(format!("{}.json", d.hex()));
        fs::remove_file(path).map_err(OciError::io(format!("remove image {d}")))
    }

    /// The names in `sub` (`blobs/sha256`, `layers` or `images`).
    pub(crate) fn names(&self, sub: &str) -> Result<Vec<String>> {
        let dir = self.root.join(sub);
        let entries =
            fs::read_dir(&dir).map_err(OciError::io(format!("read {}", dir.display())))?;
        Ok(entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect())
    }
}
