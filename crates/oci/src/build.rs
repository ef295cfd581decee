//! Building images: reproducible layers from directories (entries in name order, owner 0:0,
//! mtime 0, modes 0644/0755, a gzip header without a name or time, so the same files give the
//! same digest on any machine), and an image config + OCI manifest from a base image and
//! layers. Nothing here unpacks: a pull of the built image finds its blobs in the store.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Config, Descriptor, History, ImageConfiguration, ImageManifestBuilder, MediaType, RootFsBuilder,
};
use serde::Serialize;

use crate::config::RunConfig;
use crate::digest::{Digest, HashReader, HashWriter};
use crate::images::{Images, MAX_METADATA_BYTES};
use crate::store::{ImageRecord, LayerRecord};
use crate::{OciError, Result};

const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A layer kept in the store as a blob, ready to go into an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltLayer {
    /// The blob's digest (the compressed tar).
    pub digest: Digest,
    /// The uncompressed tar's digest.
    pub diff_id: Digest,
    /// The blob's size in bytes.
    pub size: u64,
}

/// What to build an image from.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// A stored (pulled) image to build on; `None` for an image of the new layers only.
    pub base: Option<Digest>,
    /// Layers on top of the base's, bottom first.
    pub layers: Vec<BuiltLayer>,
    /// Config fields set over the base's.
    pub config: RunConfig,
    /// A reference to record the image under (e.g. where it will be pushed).
    pub reference: Option<String>,
}

impl Images {
    /// Pack the tree at `dir` as a reproducible gzip'd tar layer whose entries sit under
    /// `prefix` (e.g. `home/app/function`; empty for the root), and keep it as a blob.
    /// Sockets, FIFOs and devices in `dir` are refused, naming the path.
    pub fn build_layer(&self, dir: &Path, prefix: &str) -> Result<BuiltLayer> {
        let tmp = self.store.temp_path("build");
        let result = self.build_layer_at(dir, prefix, &tmp);
        let _ = fs::remove_file(&tmp);
        result
    }

    fn build_layer_at(&self, dir: &Path, prefix: &str, tmp: &Path) -> Result<BuiltLayer> {
        let file = File::create(tmp).map_err(OciError::io("create layer blob"))?;
        let gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(HashWriter::new(file), flate2::Compression::default());
        let mut tar = tar::Builder::new(HashWriter::new(gz));
        let prefix = PathBuf::from(prefix.trim_matches('/'));
        let mut at = PathBuf::new();
        for part in prefix.components() {
            at.push(part);
            append(&mut tar, &at, Kind::Dir)?;
        }
        append_tree(&mut tar, dir, &prefix)?;
        let io_err = OciError::io("write layer blob");
        let (gz, diff_id, _) = tar
            .into_inner()
            .map_err(OciError::io("write layer blob"))?
            .finish();
        let (file, digest, size) = gz
            .finish()
            .map_err(OciError::io("write layer blob"))?
            .finish();
        file.sync_all().map_err(io_err)?;
        if !self.store.has_blob(&digest) {
            self.store.commit_blob(tmp, &digest)?;
        }
        Ok(BuiltLayer {
            digest,
            diff_id,
            size,
        })
    }

    /// Keep `blob`, a gzip'd tar layer made elsewhere, as it is (its content is checked when
    /// an image holding it is unpacked, as any pulled layer's).
    pub fn add_layer(&self, blob: &[u8]) -> Result<BuiltLayer> {
        let digest = Digest::of(blob);
        let gz = flate2::read::MultiGzDecoder::new(blob);
        let (_, diff_id, _) = HashReader::new(gz)
            .finish()
            .map_err(|e| OciError::BadInput(format!("the layer is not gzip: {e}")))?;
        self.store.write_blob("layer", &digest, blob)?;
        Ok(BuiltLayer {
            digest,
            diff_id,
            size: blob.len() as u64,
        })
    }

    /// Make the config and OCI manifest of `spec` and keep them with an image record; returns
    /// the manifest's digest (the image's). The same inputs give the same digest.
    pub fn build_image(&self, spec: &ImageSpec) -> Result<Digest> {
        let (mut config, mut layers) = match &spec.base {
            Some(base) => {
                let record = self.find(base)?;
                let bytes = self
                    .store
                    .read_blob(&record.config, MAX_METADATA_BYTES)?
                    .ok_or_else(|| OciError::NotCached(format!("config of {base}")))?;
                let config: ImageConfiguration =
                    serde_json::from_slice(&bytes).map_err(|e| OciError::BadImage {
                        reference: base.to_string(),
                        detail: format!("its config is not valid: {e}"),
                    })?;
                (config, record.layers)
            }
            None => (self.empty_config()?, Vec::new()),
        };
        let mut run = config.config().clone().unwrap_or_default();
        spec.config.apply(&mut run);
        config.set_config(Some(run));
        for l in &spec.layers {
            if !self.store.has_blob(&l.digest) {
                return Err(OciError::NotCached(format!(
                    "layer {} (build it again)",
                    l.digest
                )));
            }
            config
                .rootfs_mut()
                .diff_ids_mut()
                .push(l.diff_id.to_string());
            if let Some(h) = config.history_mut() {
                let mut entry = History::default();
                entry.set_created_by(Some("virga build".into()));
                h.push(entry);
            }
            layers.push(LayerRecord {
                blob: l.digest.clone(),
                diff_id: l.diff_id.clone(),
                media_type: LAYER_GZIP.into(),
                size: l.size,
            });
        }
        for l in &mut layers {
            // Same bytes, OCI's name: an OCI manifest names its layers in OCI's terms.
            l.media_type = match l.media_type.as_str() {
                "application/vnd.docker.image.rootfs.diff.tar.gzip" => LAYER_GZIP.into(),
                "application/vnd.docker.image.rootfs.diff.tar" => {
                    "application/vnd.oci.image.layer.v1.tar".into()
                }
                other => other.into(),
            };
        }
        let config_bytes = canonical(&config)?;
        let config_digest = Digest::of(&config_bytes);
        self.store
            .write_blob("config", &config_digest, &config_bytes)?;
        let manifest_bytes = canonical(&manifest(
            &config_digest,
            config_bytes.len() as u64,
            &layers,
        )?)?;
        let digest = Digest::of(&manifest_bytes);
        self.store
            .write_blob("manifest", &digest, &manifest_bytes)?;
        self.store.put_record(&ImageRecord {
            digest: digest.clone(),
            manifest: digest.clone(),
            config: config_digest,
            layers,
            references: spec.reference.iter().cloned().collect(),
        })?;
        Ok(digest)
    }

    fn empty_config(&self) -> Result<ImageConfiguration> {
        let rootfs = RootFsBuilder::default()
            .typ("layers")
            .diff_ids(Vec::<String>::new())
            .build()
            .map_err(spec_err)?;
        let mut c = ImageConfiguration::default();
        c.set_os(self.opts.platform.os.as_str().into());
        c.set_architecture(self.opts.platform.architecture.as_str().into());
        c.set_rootfs(rootfs);
        c.set_config(Some(Config::default()));
        c.set_history(None);
        Ok(c)
    }
}

fn manifest(
    config: &Digest,
    size: u64,
    layers: &[LayerRecord],
) -> Result<oci_spec::image::ImageManifest> {
    let digest = |d: &Digest| {
        d.as_str()
            .parse::<oci_spec::image::Digest>()
            .map_err(spec_err)
    };
    let layers = layers
        .iter()
        .map(|l| {
            Ok(Descriptor::new(
                MediaType::from(l.media_type.as_str()),
                l.size,
                digest(&l.blob)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(Descriptor::new(
            MediaType::ImageConfig,
            size,
            digest(config)?,
        ))
        .layers(layers)
        .build()
        .map_err(spec_err)
}

fn spec_err(e: impl std::fmt::Display) -> OciError {
    OciError::BadInput(format!("cannot make the image: {e}"))
}

/// JSON with sorted keys (serde_json's maps are ordered), so HashMaps in oci-spec's types
/// (labels, annotations) cannot change a digest.
fn canonical<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_value(v)
        .and_then(|v| serde_json::to_vec(&v))
        .map_err(spec_err)
}

/// What a tree entry becomes in the tar.
enum Kind {
    Dir,
    File {
        path: PathBuf,
        exec: bool,
        size: u64,
    },
    Link(PathBuf),
}

fn append<W: Write>(tar: &mut tar::Builder<W>, at: &Path, kind: Kind) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    let err = |e: io::Error| OciError::io(format!("pack {}", at.display()))(e);
    match kind {
        Kind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, at, io::empty()).map_err(err)
        }
        Kind::File { path, exec, size } => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(if exec { 0o755 } else { 0o644 });
            h.set_size(size);
            let f = File::open(&path).map_err(err)?;
            // Exactly the size in the header, even if the file grows meanwhile.
            tar.append_data(&mut h, at, io::Read::take(f, size))
                .map_err(err)
        }
        Kind::Link(target) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            tar.append_link(&mut h, at, target).map_err(err)
        }
    }
}

/// Append the contents of `dir` under `at`, in byte order of names, recursively.
fn append_tree<W: Write>(tar: &mut tar::Builder<W>, dir: &Path, at: &Path) -> Result<()> {
    let read = fs::read_dir(dir).map_err(OciError::io(format!("read {}", dir.display())))?;
    let mut names: Vec<_> = read
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(OciError::io(format!("read {}", dir.display())))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel = at.join(&name);
        let meta = fs::symlink_metadata(&path)
            .map_err(OciError::io(format!("stat {}", path.display())))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            append(tar, &rel, Kind::Dir)?;
            append_tree(tar, &path, &rel)?;
        } else if ft.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            append(
                tar,
                &rel,
                Kind::File {
                    path,
                    exec,
                    size: meta.len(),
                },
            )?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path)
                .map_err(OciError::io(format!("read link {}", path.display())))?;
            append(tar, &rel, Kind::Link(target))?;
        } else {
            return Err(OciError::BadInput(format!(
                "{} is not a file, directory or symlink (sockets, FIFOs and devices cannot go into a layer)",
                path.display()
            )));
        }
    }
    Ok(())
}
