//! Stores written before secrets were sealed keep them as plain JSON in the `secrets` table.
//! Such a store is copied at open into a fresh file with every secret sealed, and the copy
//! replaces the original in one rename: all or nothing, and no plain value survives in the
//! data directory (sealing in place would leave earlier values in redb's free pages).

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition, TableHandle};
use zeroize::Zeroizing;

use crate::db::{db_err, FUNCTIONS, SEALED_SECRETS};
use crate::{Result, SecretsKey, StoreError};

/// The table of plain secrets (JSON byte arrays) older versions wrote.
const PLAIN_SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");

/// Whether `db` still has the plain secrets table.
fn has_plain_secrets(db: &Database) -> Result<bool> {
    let tx = db.begin_read().map_err(db_err)?;
    let mut tables = tx.list_tables().map_err(db_err)?;
    Ok(tables.any(|t| t.name() == PLAIN_SECRETS.name()))
}

/// `db` (open at `path`) with its plain secrets sealed under `key`, and how many there
/// were; `db` itself when there is nothing to migrate.
pub(crate) fn seal_plain_secrets(
    db: Database,
    path: &Path,
    key: &SecretsKey,
) -> Result<(Database, usize)> {
    if !has_plain_secrets(&db)? {
        return Ok((db, 0));
    }
    let (functions, secrets) = read_old(&db)?;
    let tmp = path.with_extension("redb.sealing");
    // A leftover of a migration that was interrupted: the original is still whole.
    fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(StoreError::io(format!("create {}", tmp.display())))?;
    let copy = Database::create(&tmp).map_err(db_err)?;
    let tx = copy.begin_write().map_err(db_err)?;
    {
        let mut table = tx.open_table(FUNCTIONS).map_err(db_err)?;
        for (name, value) in &functions {
            table
                .insert(name.as_str(), value.as_slice())
                .map_err(db_err)?;
        }
        let mut table = tx.open_table(SEALED_SECRETS).map_err(db_err)?;
        for (name, value) in &secrets {
            let sealed = key.seal(name, value)?;
            table
                .insert(name.as_str(), sealed.as_slice())
                .map_err(db_err)?;
        }
    }
    tx.commit().map_err(db_err)?;
    drop(copy);
    fs::rename(&tmp, path).map_err(StoreError::io(format!("replace {}", path.display())))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(StoreError::io(format!("sync {}", dir.display())))?;
    }
    drop(db);
    let db = Database::create(path).map_err(db_err)?;
    Ok((db, secrets.len()))
}

/// Rows of the old layout's two tables.
type OldRows = (Vec<(String, Vec<u8>)>, Vec<(String, Zeroizing<Vec<u8>>)>);

/// The functions (as stored) and the plain secrets (decoded) of an old store.
fn read_old(db: &Database) -> Result<OldRows> {
    let tx = db.begin_read().map_err(db_err)?;
    let mut functions = Vec::new();
    for row in tx
        .open_table(FUNCTIONS)
        .map_err(db_err)?
        .iter()
        .map_err(db_err)?
    {
        let (k, v) = row.map_err(db_err)?;
        functions.push((k.value().to_string(), v.value().to_vec()));
    }
    let table = tx.open_table(PLAIN_SECRETS).map_err(db_err)?;
    let mut secrets = Vec::new();
    for row in table.iter().map_err(db_err)? {
        let (k, v) = row.map_err(db_err)?;
        let name = k.value().to_string();
        let value: Vec<u8> = serde_json::from_slice(v.value()).map_err(|_| {
            StoreError::Db(format!(
                "secret {name:?} as an older version stored it is not a byte array: \
                 nothing was changed"
            ))
        })?;
        secrets.push((name, Zeroizing::new(value)));
    }
    Ok((functions, secrets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::tests::key;
    use crate::Store;

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }

    #[test]
    fn plain_secrets_of_an_older_store_are_sealed_and_leave_no_trace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let old = br#"{"deployment":{"service":"f","image":"","envProcess":"cat"},"created_at":"2024-05-01T12:00:00Z","replicas":1}"#;
        let plain = |v: &[u8]| serde_json::to_vec(v).unwrap();
        {
            // The old layout, with a value that was updated (its page is free, not gone).
            let db = Database::create(&path).unwrap();
            for value in [&b"first-value-0123"[..], b"second-value-4567"] {
                let tx = db.begin_write().unwrap();
                tx.open_table(FUNCTIONS)
                    .unwrap()
                    .insert("f", &old[..])
                    .unwrap();
                tx.open_table(PLAIN_SECRETS)
                    .unwrap()
                    .insert("s", plain(value).as_slice())
                    .unwrap();
                tx.commit().unwrap();
            }
            assert_eq!(
                count(&fs::read(&path).unwrap(), &plain(b"first-value-0123")),
                1
            );
        }
        let s = Store::open(dir.path(), key()).unwrap();
        assert_eq!(
            s.secret("s").unwrap().unwrap().as_slice(),
            b"second-value-4567"
        );
        assert_eq!(
            s.function("f").unwrap().unwrap().deployment.env_process,
            "cat"
        );
        drop(s);
        let bytes = fs::read(&path).unwrap();
        for value in [&b"first-value-0123"[..], b"second-value-4567"] {
            assert_eq!(count(&bytes, value) + count(&bytes, &plain(value)), 0);
        }
        assert!(!path.with_extension("redb.sealing").exists());
        // Sealed once: the next open finds nothing to migrate and the same values.
        let s = Store::open(dir.path(), key()).unwrap();
        assert_eq!(s.secret_names().unwrap(), ["s"]);
        assert_eq!(
            s.secret("s").unwrap().unwrap().as_slice(),
            b"second-value-4567"
        );
    }
}
