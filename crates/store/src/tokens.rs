//! API tokens: `vg_<id>_<secret>`, the secret 32 random bytes (base64url). Only the secret's
//! SHA-256 is stored (it has full entropy, so no slow hash is needed), looked up by id and
//! compared in constant time. A token that is also an AWS access key keeps its secret sealed
//! as well (under the secrets key, kept apart from the data directory): SigV4 signatures are
//! HMACs, which only the secret itself can check. A revoked token leaves a tombstone (its id
//! and when), so its holder is told it was revoked rather than that it never existed.

use base64::Engine;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use chrono::{DateTime, Utc};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use virga_types::TokenInfo;
use zeroize::Zeroizing;

use crate::db::db_err;
use crate::{Result, Store, StoreError};

/// Tokens by id, as JSON ([`StoredToken`]).
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
/// Revoked tokens' ids and when they were revoked (RFC 3339).
const REVOKED: TableDefinition<&str, &str> = TableDefinition::new("revoked_tokens");

/// What every token string starts with.
pub const TOKEN_PREFIX: &str = "vg_";
/// Bytes of a token id (hex in the token).
const ID_LEN: usize = 10;
/// Bytes of a token secret.
const SECRET_LEN: usize = 32;
/// Tombstones kept; beyond, the oldest revocations are forgotten.
const REVOKED_KEPT: u64 = 10_000;

/// A token as stored: its description and the SHA-256 of its secret.
#[derive(Serialize, Deserialize)]
struct StoredToken {
    #[serde(flatten)]
    info: TokenInfo,
    /// Hex SHA-256 of the secret's bytes.
    hash: String,
    /// An access key's secret (its base64url text), sealed, in base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<String>,
}

/// The sealed name of token `id`'s secret (no secret's name has a `:`).
fn sealed_name(id: &str) -> String {
    format!("token:{id}")
}

/// What a presented token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// A live token.
    Valid(TokenInfo),
    /// Not of the form `vg_ID_SECRET`, and why.
    Malformed(&'static str),
    /// No token has this id, or its secret is another.
    Unknown,
    /// Revoked at that time.
    Revoked(String, DateTime<Utc>),
    /// Expired at that time.
    Expired(String, DateTime<Utc>),
}

/// Split `token` into its id and secret bytes.
fn parse(token: &str) -> std::result::Result<(&str, Zeroizing<Vec<u8>>), &'static str> {
    let rest = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or("it does not start with vg_")?;
    let (id, secret) = rest.split_once('_').ok_or("it has no secret part")?;
    if id.len() != 2 * ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("its id is not 20 hex digits");
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(secret)
        .map_err(|_| "its secret is not base64url")?;
    if bytes.len() != SECRET_LEN {
        return Err("its secret is not 32 bytes long");
    }
    Ok((id, Zeroizing::new(bytes)))
}

fn hash(secret: &[u8]) -> String {
    hex::encode(Sha256::digest(secret))
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Db(format!("stored token: {e}"))
}

/// Create the token tables if this store has none yet.
pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<()> {
    tx.open_table(TOKENS).map_err(db_err)?;
    tx.open_table(REVOKED).map_err(db_err)?;
    Ok(())
}

fn read_all(db: &Database) -> Result<Vec<StoredToken>> {
    let tx = db.begin_read().map_err(db_err)?;
    let table = tx.open_table(TOKENS).map_err(db_err)?;
    let mut out = Vec::new();
    for row in table.iter().map_err(db_err)? {
        let (_, v) = row.map_err(db_err)?;
        out.push(serde_json::from_slice(v.value()).map_err(json_err)?);
    }
    Ok(out)
}

impl Store {
    /// Mint a token described by `info` (whose `id` is replaced by a fresh random one):
    /// stores its hash and returns the stored description and the token string, which
    /// exists nowhere else. [`StoreError::Exists`] when a token has that name.
    pub fn create_token(&self, mut info: TokenInfo) -> Result<(TokenInfo, Zeroizing<String>)> {
        let mut id = [0u8; ID_LEN];
        OsRng.fill_bytes(&mut id);
        let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
        OsRng.fill_bytes(secret.as_mut());
        info.id = hex::encode(id);
        let b64 = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(*secret));
        let token = Zeroizing::new(format!("{TOKEN_PREFIX}{}_{}", info.id, *b64));
        let sealed = match info.access_key {
            true => Some(
                base64::engine::general_purpose::STANDARD
                    .encode(self.key.seal(&sealed_name(&info.id), b64.as_bytes())?),
            ),
            false => None,
        };
        let stored = StoredToken {
            info: info.clone(),
            hash: hash(secret.as_ref()),
            sealed,
        };
        let bytes = serde_json::to_vec(&stored).map_err(json_err)?;
        self.with_db(true, |db| {
            // Checked and inserted in one transaction: of two creates of a name, one wins.
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut table = tx.open_table(TOKENS).map_err(db_err)?;
                for row in table.iter().map_err(db_err)? {
                    let (_, v) = row.map_err(db_err)?;
                    let t: StoredToken = serde_json::from_slice(v.value()).map_err(json_err)?;
                    if t.info.name == info.name {
                        return Err(StoreError::Exists {
                            kind: "token",
                            name: info.name.clone(),
                        });
                    }
                }
                table
                    .insert(info.id.as_str(), bytes.as_slice())
                    .map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })?;
        Ok((info, token))
    }

    /// What `token` is at time `now`. Every check reads the store, so a revocation counts
    /// from the moment it is committed.
    pub fn check_token(&self, token: &str, now: DateTime<Utc>) -> Result<TokenCheck> {
        let (id, secret) = match parse(token) {
            Ok(parts) => parts,
            Err(why) => return Ok(TokenCheck::Malformed(why)),
        };
        let given = hash(&secret);
        self.with_db(false, |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(TOKENS).map_err(db_err)?;
            let Some(row) = table.get(id).map_err(db_err)? else {
                let revoked = tx.open_table(REVOKED).map_err(db_err)?;
                return Ok(match revoked.get(id).map_err(db_err)? {
                    Some(at) => DateTime::parse_from_rfc3339(at.value())
                        .map_or(TokenCheck::Unknown, |at| {
                            TokenCheck::Revoked(id.to_string(), at.to_utc())
                        }),
                    None => TokenCheck::Unknown,
                });
            };
            let stored: StoredToken = serde_json::from_slice(row.value()).map_err(json_err)?;
            if !bool::from(given.as_bytes().ct_eq(stored.hash.as_bytes())) {
                return Ok(TokenCheck::Unknown);
            }
            Ok(match stored.info.expires {
                Some(at) if at <= now => TokenCheck::Expired(stored.info.id, at),
                _ => TokenCheck::Valid(stored.info),
            })
        })
    }

    /// The secret access key of access-key token `id` and the token, while it is valid at
    /// `now`; `None` for an unknown, revoked or expired token or one that is no access key.
    pub fn access_key(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(TokenInfo, Zeroizing<String>)>> {
        let Some(stored) = self.with_db(false, |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(TOKENS).map_err(db_err)?;
            let row = table.get(id).map_err(db_err)?;
            row.map(|v| serde_json::from_slice::<StoredToken>(v.value()).map_err(json_err))
                .transpose()
        })?
        else {
            return Ok(None);
        };
        if stored.info.expires.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        let Some(sealed) = stored.sealed else {
            return Ok(None);
        };
        let altered = || StoreError::WrongKey(format!("token {id:?} was altered on disk"));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .map_err(|_| altered())?;
        let secret = self
            .key
            .open(&sealed_name(id), &bytes)
            .ok_or_else(altered)?;
        let text = String::from_utf8(secret.to_vec()).map_err(|_| altered())?;
        Ok(Some((stored.info, Zeroizing::new(text))))
    }

    /// Every token (revoked ones not), oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenInfo>> {
        let mut all: Vec<TokenInfo> = self
            .with_db(false, read_all)?
            .into_iter()
            .map(|t| t.info)
            .collect();
        all.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(all)
    }

    /// One token's description.
    pub fn token(&self, id: &str) -> Result<Option<TokenInfo>> {
        self.with_db(false, |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(TOKENS).map_err(db_err)?;
            let row = table.get(id).map_err(db_err)?;
            row.map(|v| serde_json::from_slice::<StoredToken>(v.value()).map_err(json_err))
                .transpose()
                .map(|t| t.map(|t| t.info))
        })
    }

    /// Revoke token `id` at `now`: its row goes (hash and all) and a tombstone stays. The
    /// revoked token, or `None` when there was none.
    pub fn revoke_token(&self, id: &str, now: DateTime<Utc>) -> Result<Option<TokenInfo>> {
        self.with_db(true, |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let removed = {
                let mut table = tx.open_table(TOKENS).map_err(db_err)?;
                let removed = table.remove(id).map_err(db_err)?;
                removed
                    .map(|v| serde_json::from_slice::<StoredToken>(v.value()).map_err(json_err))
                    .transpose()?
            };
            if removed.is_some() {
                let mut revoked = tx.open_table(REVOKED).map_err(db_err)?;
                revoked
                    .insert(id, now.to_rfc3339().as_str())
                    .map_err(db_err)?;
                forget_oldest_revocation(&mut revoked)?;
            }
            tx.commit().map_err(db_err)?;
            Ok(removed.map(|t| t.info))
        })
    }

    /// Take namespace `ns` (being deleted) from every token, revoking at `now` those left
    /// with none; how many were revoked.
    pub fn forget_namespace_in_tokens(&self, ns: &str, now: DateTime<Utc>) -> Result<usize> {
        self.with_db(true, |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let mut revoked_ids = Vec::new();
            {
                let mut table = tx.open_table(TOKENS).map_err(db_err)?;
                let mut changed = Vec::new();
                for row in table.iter().map_err(db_err)? {
                    let (_, v) = row.map_err(db_err)?;
                    let mut t: StoredToken = serde_json::from_slice(v.value()).map_err(json_err)?;
                    let Some(list) = t.info.namespaces.as_mut() else {
                        continue;
                    };
                    if list.iter().any(|n| n == ns) {
                        list.retain(|n| n != ns);
                        changed.push(t);
                    }
                }
                for t in changed {
                    if t.info.namespaces.as_ref().is_some_and(Vec::is_empty) {
                        table.remove(t.info.id.as_str()).map_err(db_err)?;
                        revoked_ids.push(t.info.id);
                    } else {
                        let bytes = serde_json::to_vec(&t).map_err(json_err)?;
                        table
                            .insert(t.info.id.as_str(), bytes.as_slice())
                            .map_err(db_err)?;
                    }
                }
            }
            {
                let mut revoked = tx.open_table(REVOKED).map_err(db_err)?;
                for id in &revoked_ids {
                    revoked
                        .insert(id.as_str(), now.to_rfc3339().as_str())
                        .map_err(db_err)?;
                    forget_oldest_revocation(&mut revoked)?;
                }
            }
            tx.commit().map_err(db_err)?;
            Ok(revoked_ids.len())
        })
    }
}

/// Keep at most [`REVOKED_KEPT`] tombstones: drop the oldest revocation beyond.
fn forget_oldest_revocation(table: &mut redb::Table<&str, &str>) -> Result<()> {
    if table.len().map_err(db_err)? <= REVOKED_KEPT {
        return Ok(());
    }
    let mut oldest: Option<(String, String)> = None;
    for row in table.iter().map_err(db_err)? {
        let (id, at) = row.map_err(db_err)?;
        if oldest.as_ref().is_none_or(|(_, o)| at.value() < o.as_str()) {
            oldest = Some((id.value().to_string(), at.value().to_string()));
        }
    }
    if let Some((id, _)) = oldest {
        table.remove(id.as_str()).map_err(db_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tests::key;

    fn info(name: &str, expires: Option<DateTime<Utc>>) -> TokenInfo {
        TokenInfo {
            id: String::new(),
            name: name.into(),
            role: "deployer".into(),
            namespaces: Some(vec!["openfaas-fn".into()]),
            created: Utc::now(),
            expires,
            created_by: "admin".into(),
            access_key: false,
        }
    }

    #[test]
    fn access_keys_keep_their_secret_sealed_and_open_only_while_valid() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), key()).unwrap();
        let now = Utc::now();
        let (plain, _) = s.create_token(info("plain", None)).unwrap();
        assert_eq!(s.access_key(&plain.id, now).unwrap(), None);
        let mut ak = info("ak", Some(now + chrono::Duration::hours(1)));
        ak.access_key = true;
        let (ak, token) = s.create_token(ak).unwrap();
        let secret = &token[TOKEN_PREFIX.len() + 2 * ID_LEN + 1..];
        let (got, key_secret) = s.access_key(&ak.id, now).unwrap().unwrap();
        assert_eq!((got, key_secret.as_str()), (ak.clone(), secret));
        let later = now + chrono::Duration::hours(2);
        assert_eq!(s.access_key(&ak.id, later).unwrap(), None);
        assert_eq!(s.access_key("nope", now).unwrap(), None);
        let bytes = std::fs::read(dir.path().join("state.redb")).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        s.revoke_token(&ak.id, now).unwrap();
        assert_eq!(s.access_key(&ak.id, now).unwrap(), None);
    }

    #[test]
    fn tokens_check_by_hash_and_revoke_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), key()).unwrap();
        let now = Utc::now();
        let (ci, token) = s.create_token(info("ci", None)).unwrap();
        assert!(token.starts_with(&format!("vg_{}_", ci.id)), "{}", *token);
        assert!(matches!(
            s.create_token(info("ci", None)),
            Err(StoreError::Exists { .. })
        ));
        assert_eq!(
            s.check_token(&token, now).unwrap(),
            TokenCheck::Valid(ci.clone())
        );
        // The same id with another secret is unknown, as is garbage.
        let other = format!("vg_{}_{}", ci.id, "A".repeat(43));
        assert_eq!(s.check_token(&other, now).unwrap(), TokenCheck::Unknown);
        for bad in [
            "",
            "vg_",
            "Bearer x",
            "vg_zz_abc",
            &token[..token.len() - 1],
        ] {
            assert!(
                matches!(s.check_token(bad, now).unwrap(), TokenCheck::Malformed(_)),
                "{bad}"
            );
        }

        let soon = now + chrono::Duration::seconds(1);
        let (short, short_token) = s.create_token(info("short", Some(soon))).unwrap();
        assert!(matches!(
            s.check_token(&short_token, now).unwrap(),
            TokenCheck::Valid(_)
        ));
        assert_eq!(
            s.check_token(&short_token, soon).unwrap(),
            TokenCheck::Expired(short.id.clone(), soon)
        );
        assert_eq!(s.tokens().unwrap().len(), 2);

        assert_eq!(s.revoke_token(&ci.id, now).unwrap(), Some(ci.clone()));
        assert_eq!(s.revoke_token(&ci.id, now).unwrap(), None);
        assert!(matches!(
            s.check_token(&token, now).unwrap(),
            TokenCheck::Revoked(id, _) if id == ci.id
        ));
        assert_eq!(s.tokens().unwrap(), vec![short]);
        // The name is free again.
        s.create_token(info("ci", None)).unwrap();

        // A deleted namespace leaves every token; one left with none is revoked.
        let mut two = info("two", None);
        two.namespaces = Some(vec!["team-a".into(), "team-b".into()]);
        let (two, two_token) = s.create_token(two).unwrap();
        let mut one = info("one", None);
        one.namespaces = Some(vec!["team-a".into()]);
        let (_, one_token) = s.create_token(one).unwrap();
        assert_eq!(s.forget_namespace_in_tokens("team-a", now).unwrap(), 1);
        assert!(matches!(
            s.check_token(&one_token, now).unwrap(),
            TokenCheck::Revoked(..)
        ));
        let TokenCheck::Valid(left) = s.check_token(&two_token, now).unwrap() else {
            panic!("two was revoked");
        };
        assert_eq!(left.namespaces, Some(vec!["team-b".to_string()]));
        assert_eq!(left.id, two.id);
        let bytes = std::fs::read(dir.path().join("state.redb")).unwrap();
        let secret = &token[TOKEN_PREFIX.len() + 2 * ID_LEN + 1..];
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
}
