//! Function bundles (`.tar.gz`) built in memory, with any entry a test needs: files, links,
//! special files.

use tar::{EntryType, Header};

/// One tar entry: path, type, mode, link target (links only), data.
pub type Entry<'a> = (&'a str, EntryType, u32, &'a str, &'a [u8]);

/// A regular file `path` holding `body`, mode 0755.
pub fn file<'a>(path: &'a str, body: &'a str) -> Entry<'a> {
    (path, EntryType::Regular, 0o755, "", body.as_bytes())
}

/// The gzipped tar of `entries`, in order.
pub fn targz(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, kind, mode, link, data) in entries {
        let mut h = Header::new_gnu();
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
