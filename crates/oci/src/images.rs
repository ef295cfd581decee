//! [`Images`]: the image store and its operations, the one handle the gateway, the provider
//! and the CLI use; and what they get back.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{ImageConfig, Platform};
use crate::digest::Digest;
use crate::registry::InsecureRegistries;
use crate::store::{ImageRecord, Store};
use crate::{OciError, Result};

/// Manifests, indexes and configs are small: the OCI distribution spec suggests 4 MiB.
pub(crate) const MAX_METADATA_BYTES: u64 = 4 << 20;

/// How the store pulls and unpacks.
#[derive(Debug, Clone)]
pub struct Options {
    /// Registries spoken to over plain HTTP besides those on loopback.
    pub insecure: InsecureRegistries,
    /// The platform picked from multi-platform images, and required of single ones.
    pub platform: Platform,
    /// The most an image may unpack to (all its layers' uncompressed tars), in bytes.
    pub max_image_bytes: u64,
    /// The most entries one layer may hold.
    pub max_layer_entries: u64,
    /// Layers downloaded and unpacked at once.
    pub parallel_layers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            insecure: InsecureRegistries::default(),
            platform: Platform::host(),
            max_image_bytes: 8 << 30,
            max_layer_entries: 500_000,
            parallel_layers: 4,
        }
    }
}

/// Where a reference points, as resolved at deploy time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The reference in full, e.g. `docker.io/library/alpine:latest`.
    pub reference: String,
    /// What it points at now (an index or a manifest): what a function is pinned to.
    pub digest: Digest,
    /// `registry/repository@digest`: the pinned reference to pull later.
    pub pinned: String,
    /// The image manifest for this machine's platform.
    pub manifest: Digest,
}

/// A stored image, ready to run: its config and its unpacked layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// What its references point at (an index or the manifest).
    pub digest: Digest,
    /// The platform's image manifest.
    pub manifest: Digest,
    /// How to run it.
    pub config: ImageConfig,
    /// The unpacked layers' directories, bottom layer first.
    pub layers: Vec<PathBuf>,
}

impl Image {
    /// The layers as overlayfs's `lowerdir=` wants them: top layer first, `:`-separated.
    pub fn overlay_lowerdir(&self) -> String {
        let dirs: Vec<String> = self
            .layers
            .iter()
            .rev()
            .map(|p| p.display().to_string())
            .collect();
        dirs.join(":")
    }
}

/// A stored image as `virga images` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedImage {
    /// What its references point at.
    pub digest: Digest,
    /// The platform's image manifest.
    pub manifest: Digest,
    /// The references it was pulled, built or pushed as.
    pub references: Vec<String>,
    /// Its layers' blobs' digests, bottom first.
    pub layers: Vec<Digest>,
    /// Bytes of its blobs (compressed layers, config, manifests) as stored.
    pub size: u64,
    /// Bytes its layers unpack to (0 for a layer not unpacked yet).
    pub unpacked_size: u64,
    /// Whether every layer is unpacked.
    pub unpacked: bool,
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Image records removed.
    pub images: usize,
    /// Blobs removed.
    pub blobs: usize,
    /// Unpacked layers removed.
    pub layers: usize,
    /// Bytes freed (blob sizes plus unpacked layer sizes).
    pub bytes: u64,
}

/// How far a pull or push is, reported as it goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Layers (and, for a push, the config) to transfer.
    pub layers_total: usize,
    /// Of those, done (transferred, or already there).
    pub layers_done: usize,
    /// Bytes to transfer (compressed).
    pub bytes_total: u64,
    /// Of those, transferred or found already there.
    pub bytes_done: u64,
}

/// A callback that receives [`Progress`] after each chunk and each finished layer.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// The shared progress of one operation.
#[derive(Clone)]
pub(crate) struct Tracker {
    state: Arc<Mutex<Progress>>,
    report: Option<ProgressFn>,
}

impl Tracker {
    pub(crate) fn new(report: Option<ProgressFn>, layers: usize, bytes: u64) -> Tracker {
        let t = Tracker {
            state: Arc::new(Mutex::new(Progress {
                layers_total: layers,
                bytes_total: bytes,
                ..Progress::default()
            })),
            report,
        };
        t.update(|_| {});
        t
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Progress)) {
        let snapshot = match self.state.lock() {
            Ok(mut p) => {
                f(&mut p);
                p.clone()
            }
            Err(_) => return,
        };
        if let Some(report) = &self.report {
            report(&snapshot);
        }
    }
}

/// The image store: pulls, unpacks, builds, pushes, lists and prunes images kept in one
/// directory (the data directory's `images/`), shared by every function.
pub struct Images {
    pub(crate) store: Store,
    pub(crate) opts: Options,
    /// Pulls and builds hold it shared, a prune exclusively, so a prune never removes what an
    /// operation in progress is about to record.
    pub(crate) gc: tokio::sync::RwLock<()>,
    /// One unpack per layer at a time in this process (others wait and find it done).
    pub(crate) layer_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images")
            .field("dir", &self.store.root())
            .finish_non_exhaustive()
    }
}

impl Images {
    /// Open (or create) the store in `dir`, clearing what an interrupted run left half done.
    pub fn open(dir: &Path, opts: Options) -> Result<Images> {
        Ok(Images {
            store: Store::open(dir)?,
            opts,
            gc: tokio::sync::RwLock::new(()),
            layer_locks: Mutex::new(HashMap::new()),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        self.store.root()
    }

    /// The stored image `digest` (what a function is pinned to: the index or the manifest
    /// digest), with every layer unpacked; no network. [`OciError::NotCached`] if it or one
    /// of its layers is missing: pull it.
    pub fn image(&self, digest: &Digest) -> Result<Image> {
        let record = self.find(digest)?;
        let config = self.read_config(&record)?;
        let mut layers = Vec::with_capacity(record.layers.len());
        for l in &record.layers {
            if self.store.layer_info(&l.diff_id).is_none() {
                return Err(OciError::NotCached(format!(
                    "layer {} of image {digest}",
                    l.blob
                )));
            }
            layers.push(self.store.layer_dir(&l.diff_id).join("rootfs"));
        }
        Ok(Image {
            digest: record.digest.clone(),
            manifest: record.manifest.clone(),
            config,
            layers,
        })
    }

    /// The record whose digest or platform manifest is `digest`.
    pub(crate) fn find(&self, digest: &Digest) -> Result<ImageRecord> {
        if let Some(r) = self.store.record(digest)? {
            return Ok(r);
        }
        self.store
            .records()?
            .into_iter()
            .find(|r| &r.manifest == digest)
            .ok_or_else(|| OciError::NotCached(format!("image {digest}")))
    }

    pub(crate) fn read_config(&self, record: &ImageRecord) -> Result<ImageConfig> {
        let bytes = self
            .store
            .read_blob(&record.config, MAX_METADATA_BYTES)?
            .ok_or_else(|| OciError::NotCached(format!("config {}", record.config)))?;
        let parsed = serde_json::from_slice(&bytes).map_err(|e| OciError::BadImage {
            reference: record.digest.to_string(),
            detail: format!("its config is not valid: {e}"),
        })?;
        Ok(ImageConfig::from_oci(&parsed))
    }

    /// Every stored image with its sizes and references.
    pub fn list(&self) -> Result<Vec<CachedImage>> {
        let mut out = Vec::new();
        for r in self.store.records()? {
            let mut size = 0;
            for d in record_blobs(&r) {
                size += std::fs::metadata(self.store.blob_path(&d)).map_or(0, |m| m.len());
            }
            let infos: Vec<_> = r
                .layers
                .iter()
                .map(|l| self.store.layer_info(&l.diff_id))
                .collect();
            out.push(CachedImage {
                digest: r.digest.clone(),
                manifest: r.manifest.clone(),
                references: r.references.iter().cloned().collect(),
                layers: r.layers.iter().map(|l| l.blob.clone()).collect(),
                size,
                unpacked_size: infos.iter().flatten().map(|i| i.size).sum(),
                unpacked: infos.iter().all(Option::is_some),
            });
        }
        Ok(out)
    }

    /// Remove every image whose digest (or platform manifest) is not in `in_use`, and every
    /// blob and unpacked layer no remaining image uses. Waits for pulls and builds in
    /// progress.
    pub async fn prune(&self, in_use: &HashSet<Digest>) -> Result<Pruned> {
        let _gc = self.gc.write().await;
        let mut pruned = Pruned::default();
        let mut keep_blobs = BTreeSet::new();
        let mut keep_layers = BTreeSet::new();
        for r in self.store.records()? {
            if in_use.contains(&r.digest) || in_use.contains(&r.manifest) {
                keep_blobs.extend(record_blobs(&r).into_iter().map(|d| d.hex().to_string()));
                keep_layers.extend(r.layers.iter().map(|l| l.diff_id.hex().to_string()));
            } else {
                self.store.remove_record(&r.digest)?;
                pruned.images += 1;
            }
        }
        for hex in self.store.names("blobs/sha256")? {
            if !keep_blobs.contains(&hex) {
                let path = self.store.root().join("blobs/sha256").join(&hex);
                pruned.bytes += std::fs::metadata(&path).map_or(0, |m| m.len());
                std::fs::remove_file(&path).map_err(OciError::io("remove blob"))?;
                pruned.blobs += 1;
            }
        }
        for hex in self.store.names("layers")? {
            if !keep_layers.contains(&hex) {
                let path = self.store.root().join("layers").join(&hex);
                if let Some(d) = Digest::parse(&format!("sha256:{hex}")) {
                    pruned.bytes += self.store.layer_info(&d).map_or(0, |i| i.size);
                }
                std::fs::remove_dir_all(&path).map_err(OciError::io("remove layer"))?;
                pruned.layers += 1;
            }
        }
        Ok(pruned)
    }

    /// The lock that serializes unpacking layer `diff_id` in this process.
    pub(crate) fn layer_lock(&self, diff_id: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.layer_locks.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(diff_id.clone()).or_default().clone()
    }
}

/// The blobs an image record needs: its top digest, manifest, config and layers.
fn record_blobs(r: &ImageRecord) -> BTreeSet<Digest> {
    let mut set: BTreeSet<Digest> = r.layers.iter().map(|l| l.blob.clone()).collect();
    set.insert(r.digest.clone());
    set.insert(r.manifest.clone());
    set.insert(r.config.clone());
    set
}
