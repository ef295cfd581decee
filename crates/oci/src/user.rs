//! The numeric user and group an image's `User` names (`name`, `uid`, `name:group`,
//! `uid:gid`), names looked up in the image's own `/etc/passwd` and `/etc/group` as its
//! layers show them (top layer first, whiteouts hiding lower ones). Files are read without
//! following any link, so a layer's link can never make this read a host file.

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::images::Image;
use crate::{OciError, Result};

/// Largest passwd or group file read.
const MAX_FILE: u64 = 1 << 20;

impl Image {
    /// The uid and gid the image's `User` stands for (root when it names none).
    pub fn user_ids(&self) -> Result<(u32, u32)> {
        let Some(user) = self.config.user.as_deref() else {
            return Ok((0, 0));
        };
        let bad = |detail: String| OciError::BadImage {
            reference: self.digest.to_string(),
            detail,
        };
        let (name, group) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let passwd = self.etc_file("passwd");
        let entry = passwd.as_deref().and_then(|p| {
            p.lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 3 && (f[0] == name || f[2] == name))
        });
        let uid = match (name.parse::<u32>(), &entry) {
            (Ok(n), _) => n,
            (Err(_), Some(f)) => f[2]
                .parse()
                .map_err(|_| bad(format!("its /etc/passwd has a bad uid for {name}")))?,
            (Err(_), None) => {
                return Err(bad(format!(
                    "its User {name:?} is not in the image's /etc/passwd: use a numeric uid or \
                     add the user to the image"
                )))
            }
        };
        let gid = match group {
            None => entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
            Some(g) => match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => self
                    .etc_file("group")
                    .as_deref()
                    .and_then(|text| {
                        text.lines()
                            .map(|l| l.split(':').collect::<Vec<_>>())
                            .find(|f| f.len() > 2 && f[0] == g)
                            .and_then(|f| f[2].parse().ok())
                    })
                    .ok_or_else(|| {
                        bad(format!(
                            "its User's group {g:?} is not in the image's /etc/group: use a \
                             numeric gid"
                        ))
                    })?,
            },
        };
        Ok((uid, gid))
    }

    /// `/etc/NAME` as the image's top-most layer holding it has it, if it is a regular file
    /// reached through real directories only.
    fn etc_file(&self, name: &str) -> Option<String> {
        let rel = PathBuf::from("etc").join(name);
        for layer in self.layers.iter().rev() {
            match kind(layer, &rel) {
                Kind::File => return read_small(&layer.join(&rel)),
                Kind::Hidden => return None,
                Kind::Absent => {}
            }
        }
        None
    }
}

enum Kind {
    File,
    /// A whiteout, a link, or anything but a regular file: lower layers do not show through.
    Hidden,
    Absent,
}

/// What `rel` is in `layer`, every component checked without following a link.
fn kind(layer: &Path, rel: &Path) -> Kind {
    let mut at = layer.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        at.push(c);
        let Ok(meta) = std::fs::symlink_metadata(&at) else {
            return Kind::Absent;
        };
        let last = i + 1 == parts.len();
        if last && meta.is_file() {
            return Kind::File;
        }
        if last || !meta.is_dir() {
            return Kind::Hidden;
        }
    }
    Kind::Absent
}

fn read_small(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_FILE)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}
