//! Content-addressed bundles: `bundles/HEX.tar.gz` is the archive as uploaded and
//! `bundles/HEX/` its unpacked tree, which instances run from. Both appear atomically
//! (written under a temporary name, fsync'd, renamed), so a crash never leaves half a bundle,
//! and an upload that is refused leaves nothing behind.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use virga_types::is_sha256_hex;

use crate::unpack::{unpack, UnpackLimits};
use crate::{Result, StoreError};

/// The bundle directory.
pub struct Bundles {
    dir: PathBuf,
    seq: AtomicU64,
}

impl Bundles {
    /// Open `dir` (mode 0700), removing temporary files a crash may have left.
    pub fn open(dir: &Path) -> Result<Bundles> {
        let tmp = dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(StoreError::io("clear bundles/tmp"))?;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&tmp)
            .map_err(StoreError::io("create bundles/tmp"))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(StoreError::io("chmod bundles"))?;
        Ok(Bundles {
            dir: dir.to_path_buf(),
            seq: AtomicU64::new(0),
        })
    }

    /// A fresh path to write an upload to before [`Bundles::commit`].
    pub fn temp_path(&self) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join("tmp")
            .join(format!("upload-{}-{n}", std::process::id()))
    }

    /// The unpacked tree of bundle `hex`, if stored.
    pub fn path(&self, hex: &str) -> Option<PathBuf> {
        let p = self.dir.join(hex);
        (is_sha256_hex(hex) && p.is_dir()).then_some(p)
    }

    /// Check that the file at `tmp` hashes to `hex`, then unpack it within `limits` and
    /// store both. Returns the archive's size. The temporary file is consumed either way.
    pub fn commit(&self, tmp: &Path, hex: &str, limits: &UnpackLimits) -> Result<u64> {
        let result = self.commit_inner(tmp, hex, limits);
        let _ = fs::remove_file(tmp);
        result
    }

    fn commit_inner(&self, tmp: &Path, hex: &str, limits: &UnpackLimits) -> Result<u64> {
        if !is_sha256_hex(hex) {
            return Err(StoreError::BadBundle(format!(
                "{hex:?} is not a sha256 digest (64 lower-case hex digits)"
            )));
        }
        let mut file = File::open(tmp).map_err(StoreError::io("open upload"))?;
        let mut hasher = Sha256::new();
        let size = io::copy(&mut file, &mut HashWriter(&mut hasher))
            .map_err(StoreError::io("read upload"))?;
        let got = hex::encode(hasher.finalize());
        if got != hex {
            return Err(StoreError::BadBundle(format!(
                "content hashes to sha256:{got}, not sha256:{hex}"
            )));
        }
        if self.path(hex).is_some() {
            return Ok(size);
        }
        let unpacked = self.temp_path();
        if let Err(e) = unpack(tmp, &unpacked, limits) {
            let _ = fs::remove_dir_all(&unpacked);
            return Err(e);
        }
        let stored = self.store(&file, tmp, &unpacked, hex);
        let _ = fs::remove_dir_all(&unpacked);
        stored.map(|()| size)
    }

    /// Move a checked, unpacked upload into place.
    fn store(&self, file: &File, tmp: &Path, unpacked: &Path, hex: &str) -> Result<()> {
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(StoreError::io("chmod upload"))?;
        file.sync_all().map_err(StoreError::io("fsync upload"))?;
        fs::rename(tmp, self.dir.join(format!("{hex}.tar.gz")))
            .map_err(StoreError::io("store bundle"))?;
        if let Err(e) = fs::rename(unpacked, self.dir.join(hex)) {
            // A concurrent upload of the same bundle got there first.
            if self.path(hex).is_none() {
                return Err(StoreError::io("store bundle")(e));
            }
        }
        sync_dir(&self.dir)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync bundles dir"))
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targz() -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let data = b"print('hi')\n";
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "index.py", &data[..]).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn commit_verifies_hash_and_unpacks() {
        let dir = tempfile::tempdir().unwrap();
        let b = Bundles::open(dir.path()).unwrap();
        let bytes = targz();
        let hex = hex::encode(Sha256::digest(&bytes));
        let tmp = b.temp_path();
        fs::write(&tmp, &bytes).unwrap();
        let limits = UnpackLimits::default();
        assert!(matches!(
            b.commit(&tmp, &"0".repeat(64), &limits),
            Err(StoreError::BadBundle(_))
        ));
        let tmp = b.temp_path();
        fs::write(&tmp, &bytes).unwrap();
        assert_eq!(b.commit(&tmp, &hex, &limits).unwrap(), bytes.len() as u64);
        let p = b.path(&hex).unwrap();
        assert_eq!(fs::read(p.join("index.py")).unwrap(), b"print('hi')\n");
        assert_eq!(
            fs::read(dir.path().join(format!("{hex}.tar.gz"))).unwrap(),
            bytes
        );
    }
}
