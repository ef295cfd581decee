//! Secret values sealed at rest: XChaCha20-Poly1305 under a 256-bit key kept apart from the
//! data directory, a fresh random nonce for every value (192 bits, so random nonces never
//! repeat in practice) and the secret's name as associated data, so a sealed value copied
//! under another name does not open.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use base64::Engine;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::{Result, StoreError};

/// First byte of every sealed value: the format, so another cipher can follow later.
const FORMAT: u8 = 1;
/// XChaCha20's nonce length.
const NONCE_LEN: usize = 24;
/// Key length in bytes.
const KEY_LEN: usize = 32;

/// The key secret values are sealed with. It never prints (`Debug` shows no bytes) and is
/// wiped from memory when dropped.
#[derive(Clone)]
pub struct SecretsKey(XChaCha20Poly1305);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

fn key_error(msg: impl Into<String>) -> StoreError {
    StoreError::Key(msg.into())
}

impl SecretsKey {
    /// A new random key.
    pub fn random() -> SecretsKey {
        SecretsKey(XChaCha20Poly1305::new(random_bytes().as_ref().into()))
    }

    /// A key written as 64 hex digits or as base64 of 32 bytes (surrounding whitespace
    /// ignored). Errors never quote the text.
    pub fn parse(text: &str) -> Result<SecretsKey> {
        let text = text.trim();
        let bytes = Zeroizing::new(if text.len() == 2 * KEY_LEN {
            hex::decode(text).map_err(|_| key_error("64 characters but not hex digits"))?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| key_error("neither 64 hex digits nor base64"))?
        });
        if bytes.len() != KEY_LEN {
            return Err(key_error(format!(
                "{} bytes, not {KEY_LEN} (make one with `openssl rand -hex 32`)",
                bytes.len()
            )));
        }
        let key = XChaCha20Poly1305::new_from_slice(&bytes)
            .map_err(|_| key_error(format!("not {KEY_LEN} bytes")))?;
        Ok(SecretsKey(key))
    }

    /// The key in the file at `path`, which is created (0600, its directory 0700) with a
    /// new random key when it does not exist; whether it was created. A file others may
    /// read is refused, as ssh refuses such keys.
    pub fn load_or_create(path: &Path) -> Result<(SecretsKey, bool)> {
        let shown = path.display();
        match fs::read_to_string(path) {
            Ok(text) => {
                let mode = fs::metadata(path)
                    .map_err(StoreError::io(format!("stat {shown}")))?
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(key_error(format!(
                        "the key file {shown} may be read by others (mode {:o}): `chmod 600 {shown}`",
                        mode & 0o777
                    )));
                }
                let text = Zeroizing::new(text);
                let key = SecretsKey::parse(&text).map_err(|e| {
                    key_error(format!(
                        "the key file {shown} is not usable: {e}; it must hold 32 bytes as \
                         64 hex digits or base64"
                    ))
                })?;
                Ok((key, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_file(path),
            Err(e) => Err(StoreError::io(format!("read the key file {shown}"))(e)),
        }
    }

    /// `value` sealed for the secret `name`: format byte, nonce, ciphertext and tag.
    pub(crate) fn seal(&self, name: &str, value: &[u8]) -> Result<Vec<u8>> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .0
            .encrypt(
                &nonce,
                Payload {
                    msg: value,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| StoreError::Db(format!("cannot seal secret {name:?}")))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The value sealed for `name`; `None` when it does not open with this key (another
    /// key, another name, or altered bytes).
    pub(crate) fn open(&self, name: &str, sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let rest = sealed.strip_prefix(&[FORMAT])?;
        if rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        self.0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: name.as_bytes(),
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

/// 32 random bytes from the operating system, wiped when dropped.
fn random_bytes() -> Zeroizing<[u8; KEY_LEN]> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(bytes.as_mut());
    bytes
}

/// Write a new key to `path`. It is written to a private temporary file first and linked
/// into place, so a platform starting at the same moment reads either no file or the
/// whole key, and both end up with the same one.
fn create_key_file(path: &Path) -> Result<(SecretsKey, bool)> {
    let shown = path.display();
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(StoreError::io(format!("create {}", dir.display())))?;
    let text = Zeroizing::new(format!("{}\n", hex::encode(random_bytes().as_ref())));
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::hard_link(&tmp, path));
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(StoreError::io(format!("sync {}", dir.display())))?;
            Ok((SecretsKey::parse(&text)?, true))
        }
        // Another platform created it first: use that one.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => SecretsKey::load_or_create(path),
        Err(e) => Err(StoreError::io(format!("create the key file {shown}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn values_open_only_with_their_key_and_name() {
        let key = SecretsKey::random();
        let sealed = key.seal("a", b"value").unwrap();
        assert_eq!(key.open("a", &sealed).unwrap().as_slice(), b"value");
        assert!(key.open("b", &sealed).is_none());
        assert!(SecretsKey::random().open("a", &sealed).is_none());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(key.open("a", &altered).is_none());
        assert!(key.open("a", &sealed[..10]).is_none());
        // A fresh nonce every time.
        assert_ne!(key.seal("a", b"value").unwrap(), sealed);
    }

    #[test]
    fn keys_parse_from_hex_or_base64_only_at_32_bytes() {
        let hex = "00".repeat(32);
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(SecretsKey::parse(&hex).is_ok());
        assert!(SecretsKey::parse(&format!(" {b64}\n")).is_ok());
        for bad in ["short", &"zz".repeat(32), &"00".repeat(16), &b64[..40]] {
            let e = SecretsKey::parse(bad).unwrap_err().to_string();
            assert!(!e.contains(bad), "the error quotes the key: {e}");
        }
    }

    #[test]
    fn key_files_are_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf/virga/secrets.key");
        let (key, created) = SecretsKey::load_or_create(&path).unwrap();
        assert!(created);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let parent = fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(parent.permissions().mode() & 0o777, 0o700);
        let (again, created) = SecretsKey::load_or_create(&path).unwrap();
        assert!(!created);
        let sealed = key.seal("x", b"v").unwrap();
        assert_eq!(again.open("x", &sealed).unwrap().as_slice(), b"v");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = SecretsKey::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
