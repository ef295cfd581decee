//! Resolving a reference to its manifest for this platform (following indexes and Docker
//! manifest lists), and pulling: every layer at once (up to a bound), each streamed from the
//! registry through one pass that keeps the blob, decompresses, hashes both digests and
//! unpacks; a layer appears only once both digests match.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use oci_client::Reference;
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use tokio::sync::mpsc;

use crate::auth::Credentials;
use crate::digest::Digest;
use crate::images::{Image, Images, ProgressFn, Resolved, Tracker, MAX_METADATA_BYTES};
use crate::registry::{parse_reference, Session};
use crate::store::{ImageRecord, LayerInfo, LayerRecord, Store};
use crate::unpack::{unpack, Budget, Compression};
use crate::{OciError, Result};

/// The manifest media types asked for: OCI and Docker schema 2, images and indexes.
const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// A platform's manifest and config, resolved.
pub(crate) struct Resolution {
    pub resolved: Resolved,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
    pub config_digest: Digest,
}

impl Images {
    /// Resolve `reference` to what it points at now and this platform's manifest, checking
    /// the image is for this platform. The manifests and config are kept, so a later pull
    /// of the pinned reference only fetches layers.
    pub async fn resolve(&self, reference: &str, creds: Option<&Credentials>) -> Result<Resolved> {
        let r = parse_reference(reference)?;
        let s = Session::new(&r, creds, &self.opts.insecure).await?;
        Ok(self.resolve_with(&s, &r).await?.resolved)
    }

    /// Pull `reference` (a tag or a pinned digest) and unpack every layer not unpacked yet.
    /// A pinned reference already stored needs no network. `progress` hears about every
    /// chunk and layer.
    pub async fn pull(
        &self,
        reference: &str,
        creds: Option<&Credentials>,
        progress: Option<ProgressFn>,
    ) -> Result<Image> {
        let _gc = self.gc.read().await;
        let r = parse_reference(reference)?;
        if let Some(d) = r.digest().and_then(Digest::parse) {
            if let Ok(image) = self.image(&d) {
                return Ok(image);
            }
        }
        let s = Session::new(&r, creds, &self.opts.insecure).await?;
        let res = self.resolve_with(&s, &r).await?;
        let layers = layer_records(&res)?;
        let mut cached = 0u64;
        let mut missing = (0usize, 0u64);
        for l in &layers {
            match self.store.layer_info(&l.diff_id) {
                Some(info) => cached += info.size,
                None => missing = (missing.0 + 1, missing.1 + l.size),
            }
        }
        let Some(left) = self.opts.max_image_bytes.checked_sub(cached) else {
            return Err(self.too_large());
        };
        let budget = Arc::new(AtomicU64::new(left));
        let tracker = Tracker::new(progress, missing.0, missing.1);
        // By index: a closure over `&LayerRecord` would make this future not provably Send
        // (rustc's higher-ranked lifetime limits), and callers spawn it.
        futures_util::stream::iter(0..layers.len())
            .map(|i| self.ensure_layer(&s, &r, &layers[i], &budget, &tracker))
            .buffer_unordered(self.opts.parallel_layers.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        self.store.put_record(&ImageRecord {
            digest: res.resolved.digest.clone(),
            manifest: res.resolved.manifest.clone(),
            config: res.config_digest.clone(),
            layers,
            references: [res.resolved.reference.clone()].into(),
        })?;
        self.image(&res.resolved.digest)
    }

    fn too_large(&self) -> OciError {
        OciError::TooLarge(format!(
            "image unpacks to more than {} bytes (the limit on an image's unpacked size)",
            self.opts.max_image_bytes
        ))
    }

    pub(crate) async fn resolve_with(&self, s: &Session, r: &Reference) -> Result<Resolution> {
        let whole = r.whole();
        let bad = |detail: String| OciError::BadImage {
            reference: whole.clone(),
            detail,
        };
        let (top, bytes) = self.fetch_manifest(s, r, r.digest()).await?;
        let (manifest_digest, manifest) = match parse_manifest(&bytes).map_err(bad)? {
            Parsed::Image(m) => (top.clone(), m),
            Parsed::Index(index) => {
                let d = self.pick_platform(&index, &whole)?;
                let (d, bytes) = self
                    .fetch_manifest(s, &r.clone_with_digest(d.to_string()), Some(d.as_str()))
                    .await?;
                match parse_manifest(&bytes).map_err(bad)? {
                    Parsed::Image(m) => (d, m),
                    Parsed::Index(_) => {
                        return Err(bad("its index points at another index".into()))
                    }
                }
            }
        };
        let config_digest = Digest::parse(manifest.config().digest().as_ref())
            .ok_or_else(|| bad("its config is not named by a sha256 digest".into()))?;
        let config_bytes = self.fetch_blob_small(s, r, &config_digest).await?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
            .map_err(|e| bad(format!("its config is not valid: {e}")))?;
        let found = format!("{}/{}", config.os(), config.architecture());
        let wanted = self.opts.platform.to_string();
        if found != wanted {
            return Err(OciError::WrongPlatform {
                reference: whole,
                wanted,
                found,
            });
        }
        Ok(Resolution {
            resolved: Resolved {
                pinned: format!("{}/{}@{top}", r.registry(), r.repository()),
                reference: whole,
                digest: top,
                manifest: manifest_digest,
            },
            manifest: *manifest,
            config,
            config_digest,
        })
    }

    /// The index entry for this platform, or an error listing the platforms it has.
    fn pick_platform(&self, index: &ImageIndex, reference: &str) -> Result<Digest> {
        let want = &self.opts.platform;
        let mut found = Vec::new();
        for m in index.manifests() {
            let Some(p) = m.platform() else { continue };
            let (os, arch) = (p.os().to_string(), p.architecture().to_string());
            if os == want.os && arch == want.architecture {
                return Digest::parse(m.digest().as_ref()).ok_or_else(|| OciError::BadImage {
                    reference: reference.to_string(),
                    detail: "its index names a manifest without a sha256 digest".into(),
                });
            }
            if os != "unknown" {
                found.push(format!("{os}/{arch}"));
            }
        }
        Err(OciError::WrongPlatform {
            reference: reference.to_string(),
            wanted: want.to_string(),
            found: if found.is_empty() {
                "no platform".into()
            } else {
                found.join(", ")
            },
        })
    }

    /// The manifest `r` names (from the store when asked for by digest and kept).
    async fn fetch_manifest(
        &self,
        s: &Session,
        r: &Reference,
        want: Option<&str>,
    ) -> Result<(Digest, Vec<u8>)> {
        if let Some(d) = want.and_then(Digest::parse) {
            if let Some(bytes) = self.store.read_blob(&d, MAX_METADATA_BYTES)? {
                return Ok((d, bytes));
            }
        }
        let (bytes, _) = s
            .client
            .pull_manifest_raw(r, &s.auth, MANIFEST_TYPES)
            .await
            .map_err(|e| s.error(&r.whole(), e))?;
        if bytes.len() as u64 > MAX_METADATA_BYTES {
            return Err(OciError::TooLarge(format!(
                "the manifest of {} is larger than {MAX_METADATA_BYTES} bytes",
                r.whole()
            )));
        }
        let got = Digest::of(&bytes);
        if let Some(want) = want {
            if got.as_str() != want {
                return Err(OciError::DigestMismatch {
                    what: format!("the manifest of {}", r.whole()),
                    expected: want.to_string(),
                    actual: got.to_string(),
                });
            }
        }
        self.store.write_blob("manifest", &got, &bytes)?;
        Ok((got, bytes.to_vec()))
    }

    /// A small blob (a config), from the store or the registry, checked and kept.
    async fn fetch_blob_small(&self, s: &Session, r: &Reference, d: &Digest) -> Result<Vec<u8>> {
        if let Some(bytes) = self.store.read_blob(d, MAX_METADATA_BYTES)? {
            return Ok(bytes);
        }
        let what = format!("{} blob {d}", r.whole());
        let mut stream = s
            .client
            .pull_blob_stream(r, d.as_str())
            .await
            .map_err(|e| s.error(&what, e))?;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => bytes.extend_from_slice(&c),
                Err(e) if is_digest_error(&e) => break,
                Err(e) => return Err(s.broken(&what, &e)),
            }
            if bytes.len() as u64 > MAX_METADATA_BYTES {
                return Err(OciError::TooLarge(format!(
                    "{what} is larger than {MAX_METADATA_BYTES} bytes"
                )));
            }
        }
        self.store.write_blob(&what, d, &bytes)?;
        Ok(bytes)
    }

    /// Make sure layer `l` is unpacked: from the kept blob, or streamed from the registry.
    async fn ensure_layer(
        &self,
        s: &Session,
        r: &Reference,
        l: &LayerRecord,
        budget: &Arc<AtomicU64>,
        tracker: &Tracker,
    ) -> Result<()> {
        let lock = self.layer_lock(&l.diff_id);
        let _held = lock.lock().await;
        if self.store.layer_info(&l.diff_id).is_some() {
            return Ok(());
        }
        let job = Job {
            store: self.store.clone(),
            layer: l.clone(),
            compression: compression_of(&r.whole(), &l.media_type)?,
            budget: budget.clone(),
            max_bytes: self.opts.max_image_bytes,
            max_entries: self.opts.max_layer_entries,
        };
        let join = |e: tokio::task::JoinError| OciError::Io {
            context: "unpack layer".into(),
            source: io::Error::other(e.to_string()),
        };
        if self.store.has_blob(&l.blob) {
            let path = self.store.blob_path(&l.blob);
            let file =
                File::open(&path).map_err(OciError::io(format!("open {}", path.display())))?;
            tokio::task::spawn_blocking(move || job.run(file, None))
                .await
                .map_err(join)??;
        } else {
            let (tx, rx) = mpsc::channel(32);
            let tmp_blob = self.store.temp_path("blob");
            let unpacking = tokio::task::spawn_blocking(move || {
                let file = File::create(&tmp_blob).map_err(OciError::io("create blob"))?;
                let src = Tee {
                    inner: Chunks {
                        rx,
                        cur: Bytes::new(),
                    },
                    file,
                };
                job.run(src, Some(tmp_blob))
            });
            let downloaded = download(s, r, l, tx, tracker).await;
            let unpacked = unpacking.await.map_err(join)?;
            downloaded?;
            unpacked?;
        }
        tracker.update(|p| p.layers_done += 1);
        Ok(())
    }
}

/// Stream layer `l`'s blob into `tx`. Stops quietly when the unpacker stopped reading (its
/// error is the one to report) and when oci-client's own digest check fails (the unpacker's
/// check reports it with both digests).
async fn download(
    s: &Session,
    r: &Reference,
    l: &LayerRecord,
    tx: mpsc::Sender<io::Result<Bytes>>,
    tracker: &Tracker,
) -> Result<()> {
    let what = format!("{} layer {}", r.whole(), l.blob);
    let desc = oci_client::manifest::OciDescriptor {
        media_type: l.media_type.clone(),
        digest: l.blob.to_string(),
        size: i64::try_from(l.size).unwrap_or(i64::MAX),
        ..Default::default()
    };
    let fail = |e: OciError| async {
        let _ = tx.send(Err(io::Error::other("download failed"))).await;
        Err(e)
    };
    let mut stream = match s.client.pull_blob_stream(r, &desc).await {
        Ok(st) => st,
        Err(e) => return fail(s.error(&what, e)).await,
    };
    let mut got = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) if is_digest_error(&e) => return Ok(()),
            Err(e) => return fail(s.broken(&what, &e)).await,
        };
        got += chunk.len() as u64;
        if got > l.size {
            return fail(OciError::DigestMismatch {
                what,
                expected: format!("{} ({} bytes)", l.blob, l.size),
                actual: format!("more than {} bytes", l.size),
            })
            .await;
        }
        let n = chunk.len() as u64;
        if tx.send(Ok(chunk)).await.is_err() {
            return Ok(());
        }
        tracker.update(|p| p.bytes_done += n);
    }
    Ok(())
}

fn is_digest_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| {
        i.downcast_ref::<oci_client::errors::DigestError>()
            .is_some()
    })
}

/// One layer to unpack on a blocking thread.
struct Job {
    store: Store,
    layer: LayerRecord,
    compression: Compression,
    budget: Arc<AtomicU64>,
    max_bytes: u64,
    max_entries: u64,
}

/// Something whose end can be made durable: the blob being downloaded, or a kept blob.
trait Source: Read {
    fn finish(self) -> io::Result<()>;
}

impl Source for File {
    fn finish(self) -> io::Result<()> {
        Ok(())
    }
}

impl Job {
    /// Unpack from `src` into a fresh directory under `tmp/`, check both digests, then put
    /// the blob (if downloaded to `tmp_blob`) and the layer in place. Nothing stays on error.
    fn run<S: Source>(self, src: S, tmp_blob: Option<PathBuf>) -> Result<()> {
        let tmp = self.store.temp_path("layer");
        let _cleanup = Cleanup(
            vec![tmp.clone()]
                .into_iter()
                .chain(tmp_blob.clone())
                .collect(),
        );
        std::fs::create_dir(&tmp).map_err(OciError::io("create layer dir"))?;
        let budget = Budget {
            bytes: &self.budget,
            max_bytes: self.max_bytes,
            max_entries: self.max_entries,
        };
        let l = &self.layer;
        let (src, u) = unpack(src, self.compression, &tmp.join("rootfs"), &l.blob, &budget)?;
        src.finish().map_err(OciError::io("write blob"))?;
        if u.blob != l.blob {
            return Err(OciError::DigestMismatch {
                what: format!("layer blob {}", l.blob),
                expected: l.blob.to_string(),
                actual: u.blob.to_string(),
            });
        }
        if u.diff_id != l.diff_id {
            return Err(OciError::DigestMismatch {
                what: format!("the uncompressed layer {} (the config's diff id)", l.blob),
                expected: l.diff_id.to_string(),
                actual: u.diff_id.to_string(),
            });
        }
        let info = LayerInfo {
            size: u.size,
            entries: u.entries,
        };
        self.store.write_layer_info(&tmp, info)?;
        self.store.sync(&tmp)?;
        if let Some(tmp_blob) = &tmp_blob {
            self.store.commit_blob(tmp_blob, &l.blob)?;
        }
        self.store.commit_layer(&tmp, &l.diff_id)
    }
}

/// Removes its paths when dropped (what is committed was renamed away already).
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
    }
}

/// The chunks the download sends, as a reader.
struct Chunks {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur.split_to(n));
        Ok(n)
    }
}

/// A reader that also writes what it reads to the blob file.
struct Tee<R> {
    inner: R,
    file: File,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.file.write_all(&buf[..n])?;
        Ok(n)
    }
}

impl<R: Read> Source for Tee<R> {
    fn finish(self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// A manifest parsed by what it is.
enum Parsed {
    Image(Box<ImageManifest>),
    Index(Box<ImageIndex>),
}

#[derive(serde::Deserialize)]
struct Probe {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
}

fn parse_manifest(bytes: &[u8]) -> std::result::Result<Parsed, String> {
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| format!("its manifest is not JSON: {e}"))?;
    if probe.schema_version != Some(2) {
        return Err("its manifest is not schema version 2 (Docker schema 1 images are not supported: push it again with a current docker or skopeo)".into());
    }
    let mt = probe.media_type.unwrap_or_default();
    let index = mt.ends_with("index.v1+json")
        || mt.ends_with("manifest.list.v2+json")
        || (mt.is_empty() && probe.manifests.is_some());
    if index {
        return serde_json::from_slice(bytes)
            .map(|i| Parsed::Index(Box::new(i)))
            .map_err(|e| format!("its index is not valid: {e}"));
    }
    if !mt.is_empty() && !mt.ends_with("manifest.v1+json") && !mt.ends_with("manifest.v2+json") {
        return Err(format!(
            "its manifest has media type {mt}, which is not a container image"
        ));
    }
    serde_json::from_slice(bytes)
        .map(|m| Parsed::Image(Box::new(m)))
        .map_err(|e| format!("its manifest is not valid: {e}"))
}

/// The manifest's layers with the config's diff ids, each of a media type Virga unpacks.
fn layer_records(res: &Resolution) -> Result<Vec<LayerRecord>> {
    let reference = &res.resolved.reference;
    let bad = |detail: String| OciError::BadImage {
        reference: reference.clone(),
        detail,
    };
    let layers = res.manifest.layers();
    let diff_ids = res.config.rootfs().diff_ids();
    if layers.len() != diff_ids.len() {
        return Err(bad(format!(
            "its manifest has {} layers but its config {} diff ids",
            layers.len(),
            diff_ids.len()
        )));
    }
    layers
        .iter()
        .zip(diff_ids)
        .map(|(l, diff)| {
            let media_type = l.media_type().to_string();
            compression_of(reference, &media_type)?;
            Ok(LayerRecord {
                blob: Digest::parse(l.digest().as_ref()).ok_or_else(|| {
                    bad(format!(
                        "layer {} is not named by a sha256 digest",
                        l.digest()
                    ))
                })?,
                diff_id: Digest::parse(diff)
                    .ok_or_else(|| bad(format!("diff id {diff} is not a sha256 digest")))?,
                media_type,
                size: l.size(),
            })
        })
        .collect()
}

fn compression_of(reference: &str, media_type: &str) -> Result<Compression> {
    let bad = |detail: String| OciError::BadImage {
        reference: reference.to_string(),
        detail,
    };
    match media_type {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        "application/vnd.oci.image.layer.v1.tar+gzip" | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
        m if m.contains("nondistributable") || m.contains("foreign") => Err(bad(format!("layer media type {m}: foreign (non-distributable) layers are not supported"))),
        m if m.contains("zstd") => Err(bad(format!("layer media type {m}: zstd layers are not supported yet; push the image with gzip layers"))),
        m => Err(bad(format!("layer media type {m} is not a container image layer"))),
    }
}
