//! Functions and secrets in redb. Values are JSON so the schema can grow without migrations.

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use virga_types::FunctionDeployment;

use crate::{Bundles, Result, StoreError};

const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");

/// A deployed function as stored: the deployment plus what the platform decided about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFunction {
    /// The deployment as accepted (validated, namespace filled in).
    pub deployment: FunctionDeployment,
    /// First deployment time.
    pub created_at: DateTime<Utc>,
    /// Desired replicas.
    pub replicas: u64,
}

/// The platform's durable state.
pub struct Store {
    db: Database,
    bundles: Bundles,
    dir: PathBuf,
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

impl Store {
    /// Open (or create) the store in `dir`, which is created with mode 0700.
    pub fn open(dir: &Path) -> Result<Store> {
        fs::create_dir_all(dir).map_err(StoreError::io(format!("create {}", dir.display())))?;
        // Absolute from here on: bundle paths end up in sandbox configs and mounts.
        let dir =
            &fs::canonicalize(dir).map_err(StoreError::io(format!("resolve {}", dir.display())))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(StoreError::io(format!("chmod {}", dir.display())))?;
        let path = dir.join("state.redb");
        // Create the file ourselves so it is 0600 from the first byte: it holds secrets.
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(StoreError::io(format!("open {}", path.display())))?;
        let db = Database::create(&path).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(FUNCTIONS).map_err(db_err)?;
        tx.open_table(SECRETS).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        let bundles = Bundles::open(&dir.join("bundles"))?;
        Ok(Store {
            db,
            bundles,
            dir: dir.to_path_buf(),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bundle store.
    pub fn bundles(&self) -> &Bundles {
        &self.bundles
    }

    /// Store a new function; fails with [`StoreError::Exists`] when the name is taken.
    pub fn create_function(&self, f: &StoredFunction) -> Result<()> {
        self.write(FUNCTIONS, "function", &f.deployment.service, f, Some(false))
    }

    /// Replace a function; fails with [`StoreError::NotFound`] when it does not exist.
    pub fn update_function(&self, f: &StoredFunction) -> Result<()> {
        self.write(FUNCTIONS, "function", &f.deployment.service, f, Some(true))
    }

    /// One function.
    pub fn function(&self, name: &str) -> Result<Option<StoredFunction>> {
        self.read(FUNCTIONS, name)
    }

    /// All functions, by name.
    pub fn functions(&self) -> Result<Vec<StoredFunction>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(FUNCTIONS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (_, v) = row.map_err(db_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(db_err)?);
        }
        Ok(out)
    }

    /// Delete a function; false when it did not exist.
    pub fn delete_function(&self, name: &str) -> Result<bool> {
        self.delete(FUNCTIONS, name)
    }

    /// Store a secret: `create` fails when it exists, otherwise it must exist.
    pub fn put_secret(&self, name: &str, value: &[u8], create: bool) -> Result<()> {
        self.write(SECRETS, "secret", name, &value, Some(!create))
    }

    /// A secret's value.
    pub fn secret(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.read(SECRETS, name)
    }

    /// Names of all secrets.
    pub fn secret_names(&self) -> Result<Vec<String>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(SECRETS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            out.push(row.map_err(db_err)?.0.value().to_string());
        }
        Ok(out)
    }

    /// Delete a secret; false when it did not exist.
    pub fn delete_secret(&self, name: &str) -> Result<bool> {
        self.delete(SECRETS, name)
    }

    /// Write `value` under `key`; `must_exist` Some(true) = update only, Some(false) = create only.
    fn write<T: Serialize>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        kind: &'static str,
        key: &str,
        value: &T,
        must_exist: Option<bool>,
    ) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(db_err)?;
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = tx.open_table(def).map_err(db_err)?;
            let exists = table.get(key).map_err(db_err)?.is_some();
            match must_exist {
                Some(true) if !exists => {
                    return Err(StoreError::NotFound {
                        kind,
                        name: key.to_string(),
                    })
                }
                Some(false) if exists => {
                    return Err(StoreError::Exists {
                        kind,
                        name: key.to_string(),
                    })
                }
                _ => {}
            }
            table.insert(key, bytes.as_slice()).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    fn read<T: for<'de> Deserialize<'de>>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(def).map_err(db_err)?;
        match table.get(key).map_err(db_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(db_err)?)),
            None => Ok(None),
        }
    }

    fn delete(&self, def: TableDefinition<&str, &[u8]>, key: &str) -> Result<bool> {
        let tx = self.db.begin_write().map_err(db_err)?;
        let existed = {
            let mut table = tx.open_table(def).map_err(db_err)?;
            let existed = table.remove(key).map_err(db_err)?.is_some();
            existed
        };
        tx.commit().map_err(db_err)?;
        Ok(existed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(name: &str) -> StoredFunction {
        StoredFunction {
            deployment: FunctionDeployment {
                service: name.into(),
                env_process: "cat".into(),
                ..Default::default()
            },
            created_at: Utc::now(),
            replicas: 1,
        }
    }

    #[test]
    fn functions_and_secrets_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.create_function(&function("a")).unwrap();
            assert!(matches!(
                s.create_function(&function("a")),
                Err(StoreError::Exists { .. })
            ));
            assert!(matches!(
                s.update_function(&function("b")),
                Err(StoreError::NotFound { .. })
            ));
            s.put_secret("k", b"v", true).unwrap();
            assert!(s.put_secret("k", b"v", true).is_err());
            s.put_secret("k", b"w", false).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.functions().unwrap().len(), 1);
        assert_eq!(s.secret("k").unwrap().unwrap(), b"w");
        assert_eq!(s.secret_names().unwrap(), vec!["k".to_string()]);
        assert!(s.delete_function("a").unwrap());
        assert!(!s.delete_function("a").unwrap());
        let mode = fs::metadata(dir.path().join("state.redb"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
