//! Pushing a stored image: each blob the registry lacks (asked with a HEAD first) is mounted
//! from another repository of the registry known to hold it, or else streamed from the store, then the manifest is put under the target reference, byte for byte, so the
//! digest stays the one built.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;

use crate::auth::Credentials;
use crate::digest::Digest;
use crate::images::{Images, ProgressFn, Tracker, MAX_METADATA_BYTES};
use crate::registry::{parse_reference, Session};
use crate::{OciError, Result};

/// Bytes read from a blob per piece of an upload.
const PIECE: usize = 1 << 20;

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The reference pushed to, in full.
    pub reference: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry had already (or mounted from another repository), not uploaded.
    pub skipped: usize,
}

impl Images {
    /// Push the stored image `image` (a digest from [`Images::build_image`] or a pull) to
    /// `target` (`host[:port]/repo:tag`).
    pub async fn push(
        &self,
        image: &Digest,
        target: &str,
        creds: Option<&Credentials>,
        progress: Option<ProgressFn>,
    ) -> Result<Pushed> {
        let _gc = self.gc.read().await;
        let mut record = self.find(image)?;
        let r = parse_reference(target)?;
        let s = Session::new(&r, creds, &self.opts.insecure).await?;
        let config_size = std::fs::metadata(self.store.blob_path(&record.config))
            .map_err(|_| OciError::NotCached(format!("config {}", record.config)))?
            .len();
        let mut blobs: Vec<(Digest, u64)> = record
            .layers
            .iter()
            .map(|l| (l.blob.clone(), l.size))
            .collect();
        blobs.push((record.config.clone(), config_size));
        let tracker = Tracker::new(progress, blobs.len(), blobs.iter().map(|b| b.1).sum());
        let sent: Vec<bool> = futures_util::stream::iter(blobs.iter())
            .map(|(d, size)| self.push_blob(&s, &r, d, *size, &tracker))
            .buffer_unordered(self.opts.parallel_layers.max(1))
            .try_collect()
            .await?;
        let manifest = self
            .store
            .read_blob(&record.manifest, MAX_METADATA_BYTES)?
            .ok_or_else(|| OciError::NotCached(format!("manifest {}", record.manifest)))?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        let content_type = media_type.parse().map_err(|_| OciError::BadImage {
            reference: image.to_string(),
            detail: format!("its manifest media type {media_type:?} is not a valid header"),
        })?;
        s.client
            .push_manifest_raw(&r, manifest, content_type)
            .await
            .map_err(|e| s.error(&r.whole(), e))?;
        record.references.insert(r.whole());
        self.store.put_record(&record)?;
        let uploaded = sent.iter().filter(|s| **s).count();
        Ok(Pushed {
            reference: r.whole(),
            digest: record.manifest.clone(),
            uploaded,
            skipped: sent.len() - uploaded,
        })
    }

    /// Mount blob `d` into `r`'s repository from another repository of the same registry
    /// that a stored image was pulled from or pushed to with it; whether that worked.
    async fn mount(&self, s: &Session, r: &oci_client::Reference, d: &Digest) -> bool {
        let Ok(records) = self.store.records() else {
            return false;
        };
        let sources: BTreeSet<String> = records
            .iter()
            .filter(|rec| &rec.config == d || rec.layers.iter().any(|l| &l.blob == d))
            .flat_map(|rec| rec.references.iter())
            .filter_map(|name| parse_reference(name).ok())
            .filter(|src| src.registry() == r.registry() && src.repository() != r.repository())
            .map(|src| src.whole())
            .collect();
        for source in sources {
            let Ok(src) = parse_reference(&source) else {
                continue;
            };
            // A registry that cannot mount answers 202 and an upload session: upload then.
            if s.client.mount_blob(r, &src, d.as_str()).await.is_ok() {
                return true;
            }
        }
        false
    }

    /// Upload blob `d` unless the registry has it; whether it was uploaded.
    async fn push_blob(
        &self,
        s: &Session,
        r: &oci_client::Reference,
        d: &Digest,
        size: u64,
        tracker: &Tracker,
    ) -> Result<bool> {
        let what = format!("{} blob {d}", r.whole());
        if s.client
            .blob_exists(r, d.as_str())
            .await
            .map_err(|e| s.error(&what, e))?
        {
            tracker.update(|p| {
                p.layers_done += 1;
                p.bytes_done += size;
            });
            return Ok(false);
        }
        if self.mount(s, r, d).await {
            tracker.update(|p| {
                p.layers_done += 1;
                p.bytes_done += size;
            });
            return Ok(false);
        }
        let path = self.store.blob_path(d);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|_| OciError::NotCached(format!("blob {d}")))?;
        let t = Arc::new(tracker.clone());
        let pieces = futures_util::stream::unfold(Some(file), move |file| {
            let t = t.clone();
            async move {
                let mut file = file?;
                let mut buf = vec![0u8; PIECE];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        t.update(|p| p.bytes_done += n as u64);
                        Some((Ok(Bytes::from(buf)), Some(file)))
                    }
                    Err(e) => Some((
                        Err(oci_client::errors::OciDistributionError::IoError(e)),
                        None,
                    )),
                }
            }
        });
        s.client
            .push_blob_stream(r, pieces, d.as_str(), Some(size))
            .await
            .map_err(|e| s.error(&what, e))?;
        tracker.update(|p| p.layers_done += 1);
        Ok(true)
    }
}
