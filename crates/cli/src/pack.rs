//! Deterministic bundle archives: a directory becomes a gzip'd tar whose bytes depend only
//! on the files' relative paths, contents, permission bits and symlink targets (entries
//! sorted, mtime 0, uid/gid 0, no user names, no absolute paths), so the same input always
//! has the same SHA-256, which names the bundle.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use crate::templates::mode_of;

/// Pack `src` (its contents, not the directory itself) into tar.gz bytes.
pub fn pack_dir(src: &Path) -> Result<Vec<u8>> {
    let mut entries = Vec::new();
    walk(src, Path::new(""), &mut entries)?;
    entries.sort_by_key(|p| tar_path(p));

    let gz = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    let mut tar = tar::Builder::new(gz);
    for rel in &entries {
        let path = src.join(rel);
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut header = Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(mode_of(&meta));
        let name = tar_path(rel);
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&path)?;
            if target.is_absolute() {
                bail!(
                    "{} is a symlink to an absolute path ({}); bundles may only hold relative links",
                    path.display(),
                    target.display()
                );
            }
            header.set_entry_type(EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            tar.append_link(&mut header, &name, &target)
                .with_context(|| format!("cannot pack {}", path.display()))?;
        } else if ft.is_dir() {
            header.set_entry_type(EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, format!("{name}/"), std::io::empty())
                .with_context(|| format!("cannot pack {}", path.display()))?;
        } else if ft.is_file() {
            header.set_entry_type(EntryType::Regular);
            header.set_size(meta.len());
            let file =
                fs::File::open(&path).with_context(|| format!("cannot read {}", path.display()))?;
            tar.append_data(&mut header, &name, file)
                .with_context(|| format!("cannot pack {}", path.display()))?;
        }
    }
    let gz = tar.into_inner().context("cannot finish the tar archive")?;
    let mut bytes = gz.finish().context("cannot finish the gzip stream")?;
    bytes.flush()?;
    Ok(bytes)
}

/// Relative paths of every entry under `dir`; sockets, fifos and devices are skipped.
fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let rel = rel.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_dir() {
            out.push(rel.clone());
            walk(root, &rel, out)?;
        } else if ft.is_file() || ft.is_symlink() {
            out.push(rel);
        }
    }
    Ok(())
}

/// A relative path with `/` separators, as stored in the archive.
fn tar_path(rel: &Path) -> String {
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `1.2 KiB`-style sizes.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::write_file;

    fn sample(dir: &Path) {
        write_file(&dir.join("index.py"), b"print('hi')\n", 0o644).unwrap();
        write_file(&dir.join("function/handler.sh"), b"cat\n", 0o755).unwrap();
        write_file(&dir.join("function/z/deep.txt"), b"deep", 0o600).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("handler.sh", dir.join("function/link")).unwrap();
    }

    #[test]
    fn same_input_same_digest() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        sample(a.path());
        // Different creation order and mtimes must not matter.
        write_file(&b.path().join("function/z/deep.txt"), b"deep", 0o600).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        sample(b.path());
        let first = pack_dir(a.path()).unwrap();
        let again = pack_dir(a.path()).unwrap();
        let other = pack_dir(b.path()).unwrap();
        assert_eq!(sha256_hex(&first), sha256_hex(&again));
        assert_eq!(sha256_hex(&first), sha256_hex(&other));

        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&first[..]));
        let mut names = Vec::new();
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().mtime().unwrap(), 0);
            assert_eq!(e.header().uid().unwrap(), 0);
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if name == "function/handler.sh" {
                assert_eq!(e.header().mode().unwrap(), 0o755);
            }
            assert!(!name.starts_with('/'));
            names.push(name);
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(names.contains(&"function/z/deep.txt".to_string()));

        write_file(&b.path().join("index.py"), b"print('changed')\n", 0o644).unwrap();
        assert_ne!(sha256_hex(&first), sha256_hex(&pack_dir(b.path()).unwrap()));
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(12), "12 B");
        assert_eq!(human_size(2048), "2.0 KiB");
    }
}
