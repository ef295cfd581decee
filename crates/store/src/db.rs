//! Functions and secrets in redb. Functions are JSON so the schema can grow without
//! migrations; secrets are sealed (`sealed`) under a key that is not in the data directory.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use chrono::{DateTime, Utc};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use virga_types::{function_key, FunctionDeployment, ScalingPolicy, MAX_REPLICAS};
use zeroize::Zeroizing;

use crate::{is_disk_full, Bundles, Result, SecretsKey, StoreError};

/// Functions by key (`name`, or `name.namespace` outside the default namespace), as JSON.
pub(crate) const FUNCTIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("functions");
/// Secrets by key (as functions'), each value sealed.
pub(crate) const SEALED_SECRETS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("sealed_secrets");

/// A deployed function as stored: the deployment plus what the platform decided about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFunction {
    /// The deployment as accepted (validated, namespace filled in).
    pub deployment: FunctionDeployment,
    /// First deployment time.
    pub created_at: DateTime<Utc>,
    /// Desired replicas.
    pub replicas: u64,
    /// For a registry image: the reference as the user gave it (the deployment's `image`
    /// holds what it was pinned to, `repo@sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_ref: Option<String>,
}

impl StoredFunction {
    /// The function's platform-wide key ([`function_key`]).
    pub fn key(&self) -> String {
        function_key(&self.deployment.service, &self.deployment.namespace)
    }
}

/// The platform's durable state.
///
/// redb refuses every call after one failed write ("previous I/O error") until the database
/// is reopened, so an I/O failure closes it and the next call (or [`Store::health`]) opens
/// it again: a disk that was full works again once space is freed, without a restart.
pub struct Store {
    /// `None` while closed after an I/O failure and not reopened yet.
    db: RwLock<Option<Database>>,
    db_path: PathBuf,
    bundles: Bundles,
    dir: PathBuf,
    pub(crate) key: SecretsKey,
    /// Set when the disk failed the store, cleared when a write succeeds.
    failing: AtomicBool,
    /// The last such failure, for `/healthz`.
    failure: Mutex<String>,
}

/// A redb error as a store error: I/O failures (a full disk above all) are told apart,
/// since they close the database and answer 507/503 rather than 500.
pub(crate) fn db_err(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Io(io) if is_disk_full(&io) => StoreError::Full("database write".into()),
        redb::Error::Io(io) => StoreError::Unavailable(format!("database I/O error: {io}")),
        redb::Error::PreviousIo => {
            StoreError::Unavailable("an earlier database write failed".into())
        }
        other => StoreError::Db(other.to_string()),
    }
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Db(format!("stored value: {e}"))
}

/// Refuse `key` unless every sealed secret in `db` (at `path`) opens with it: starting
/// with another key would leave every secret unreadable.
fn check_key(db: &Database, key: &SecretsKey, path: &Path) -> Result<()> {
    let tx = db.begin_read().map_err(db_err)?;
    let table = tx.open_table(SEALED_SECRETS).map_err(db_err)?;
    for row in table.iter().map_err(db_err)? {
        let (name, sealed) = row.map_err(db_err)?;
        if key.open(name.value(), sealed.value()).is_none() {
            return Err(StoreError::WrongKey(format!(
                "secret {:?} in {} does not open with this key: the secrets were sealed \
                 with another key (or altered)",
                name.value(),
                path.display()
            )));
        }
    }
    Ok(())
}

/// A stored function, with a replica count from before the cap brought within it.
fn decode_function(bytes: &[u8]) -> Result<StoredFunction> {
    let mut f: StoredFunction = serde_json::from_slice(bytes).map_err(json_err)?;
    let max =
        ScalingPolicy::from_labels(f.deployment.labels.as_ref()).map_or(MAX_REPLICAS, |p| p.max);
    f.replicas = f.replicas.min(max);
    Ok(f)
}

impl Store {
    /// Open (or create) the store in `dir`, which is created with mode 0700, with secrets
    /// sealed under `key`. Plain secrets an older version stored are sealed first; a store
    /// whose secrets do not open with `key` is refused ([`StoreError::WrongKey`]).
    pub fn open(dir: &Path, key: SecretsKey) -> Result<Store> {
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
        let (db, sealed) = crate::migrate::seal_plain_secrets(db, &path, &key)?;
        if sealed > 0 {
            tracing::info!("store: {sealed} plain-text secrets of an older version sealed");
        }
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(FUNCTIONS).map_err(db_err)?;
        tx.open_table(SEALED_SECRETS).map_err(db_err)?;
        tx.open_table(crate::namespaces::NAMESPACES)
            .map_err(db_err)?;
        crate::tokens::create_tables(&tx)?;
        crate::audit::create_tables(&tx)?;
        tx.commit().map_err(db_err)?;
        check_key(&db, &key, &path)?;
        let bundles = Bundles::open(&dir.join("bundles"))?;
        Ok(Store {
            db: RwLock::new(Some(db)),
            db_path: path,
            bundles,
            dir: dir.to_path_buf(),
            key,
            failing: AtomicBool::new(false),
            failure: Mutex::new(String::new()),
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

    /// `Ok` while the store can write, otherwise why not. Free unless it failed: then
    /// it reopens the database if needed and writes a small file to the data directory.
    pub fn health(&self) -> std::result::Result<(), String> {
        if !self.failing.load(Ordering::Acquire) {
            return Ok(());
        }
        match self.ensure_open().and_then(|()| self.probe_write()) {
            Ok(()) => {
                self.failing.store(false, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                let last = self.failure.lock().unwrap_or_else(|p| p.into_inner());
                Err(format!("{e} (last failure: {last})"))
            }
        }
    }

    fn probe_write(&self) -> Result<()> {
        let path = self.dir.join(".write-probe");
        let result = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| {
                f.write_all(&[0; 4096])?;
                f.sync_data()
            })
            .map_err(StoreError::io("write to the data directory"));
        let _ = fs::remove_file(&path);
        result
    }

    /// Run `op` on the open database, reopening it first when a failure closed it. A
    /// storage failure (also of the reopening) closes it again and marks the store failing;
    /// a write that works clears that mark.
    pub(crate) fn with_db<T>(&self, write: bool, op: impl Fn(&Database) -> Result<T>) -> Result<T> {
        let result = self.ensure_open().and_then(|()| {
            let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
            match guard.as_ref() {
                Some(db) => op(db),
                None => Err(StoreError::Unavailable("the database is closed".into())),
            }
        });
        match &result {
            Err(e) if e.is_storage_failure() => {
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                self.failing.store(true, Ordering::Release);
                tracing::warn!("store: {e}; closing the database to reopen it");
                // Dropping it releases the file lock so it can be opened again.
                self.db.write().unwrap_or_else(|p| p.into_inner()).take();
            }
            Ok(_) if write => self.failing.store(false, Ordering::Release),
            _ => {}
        }
        result
    }

    /// Open the database again if a failure closed it.
    fn ensure_open(&self) -> Result<()> {
        if self.db.read().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Ok(());
        }
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            let db = Database::create(&self.db_path).map_err(|e| match db_err(e) {
                e if e.is_storage_failure() => e,
                e => StoreError::Unavailable(format!("reopening the database: {e}")),
            })?;
            *slot = Some(db);
            tracing::info!("store: database reopened");
        }
        Ok(())
    }

    /// Store a new function: the check that the name is free and the insert are one
    /// transaction, so of concurrent creates exactly one succeeds; the others get
    /// [`StoreError::Exists`].
    pub fn create_function(&self, f: &StoredFunction) -> Result<()> {
        let bytes = serde_json::to_vec(f).map_err(json_err)?;
        self.write(FUNCTIONS, "function", &f.key(), bytes, Some(false))
    }

    /// Replace a function; fails with [`StoreError::NotFound`] when it does not exist.
    pub fn update_function(&self, f: &StoredFunction) -> Result<()> {
        let bytes = serde_json::to_vec(f).map_err(json_err)?;
        self.write(FUNCTIONS, "function", &f.key(), bytes, Some(true))
    }

    /// One function, by key.
    pub fn function(&self, name: &str) -> Result<Option<StoredFunction>> {
        self.with_db(false, |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(FUNCTIONS).map_err(db_err)?;
            let row = table.get(name).map_err(db_err)?;
            row.map(|v| decode_function(v.value())).transpose()
        })
    }

    /// All functions, by key.
    pub fn functions(&self) -> Result<Vec<StoredFunction>> {
        self.with_db(false, |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(FUNCTIONS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(db_err)? {
                let (_, v) = row.map_err(db_err)?;
                out.push(decode_function(v.value())?);
            }
            Ok(out)
        })
    }

    /// Delete a function by key; false when it did not exist.
    pub fn delete_function(&self, name: &str) -> Result<bool> {
        self.delete(FUNCTIONS, name, None)
    }

    /// Delete `f` only if it is still what is stored under its name (undoing a create whose
    /// deploy failed without removing what another request stored since); false otherwise.
    pub fn delete_function_if(&self, f: &StoredFunction) -> Result<bool> {
        let bytes = serde_json::to_vec(f).map_err(json_err)?;
        self.delete(FUNCTIONS, &f.key(), Some(&bytes))
    }

    /// Store a secret under its key, sealed: `create` fails when it exists, otherwise it must exist.
    pub fn put_secret(&self, name: &str, value: &[u8], create: bool) -> Result<()> {
        let sealed = self.key.seal(name, value)?;
        self.write(SEALED_SECRETS, "secret", name, sealed, Some(!create))
    }

    /// A secret's value (wiped from memory when dropped).
    pub fn secret(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        self.with_db(false, |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(SEALED_SECRETS).map_err(db_err)?;
            let row = table.get(name).map_err(db_err)?;
            row.map(|v| {
                self.key.open(name, v.value()).ok_or_else(|| {
                    StoreError::WrongKey(format!("secret {name:?} was altered on disk"))
                })
            })
            .transpose()
        })
    }

    /// Keys of all secrets.
    pub fn secret_names(&self) -> Result<Vec<String>> {
        self.with_db(false, |db| {
            let tx = db.begin_read().map_err(db_err)?;
            let table = tx.open_table(SEALED_SECRETS).map_err(db_err)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(db_err)? {
                out.push(row.map_err(db_err)?.0.value().to_string());
            }
            Ok(out)
        })
    }

    /// Delete a secret; false when it did not exist.
    pub fn delete_secret(&self, name: &str) -> Result<bool> {
        self.delete(SEALED_SECRETS, name, None)
    }

    /// Write `value` under `key`; `must_exist` Some(true) = update only, Some(false) = create only.
    pub(crate) fn write(
        &self,
        def: TableDefinition<&str, &[u8]>,
        kind: &'static str,
        key: &str,
        bytes: Vec<u8>,
        must_exist: Option<bool>,
    ) -> Result<()> {
        self.with_db(true, |db| {
            let tx = db.begin_write().map_err(db_err)?;
            {
                let mut table = tx.open_table(def).map_err(db_err)?;
                let exists = table.get(key).map_err(db_err)?.is_some();
                let name = || key.to_string();
                match must_exist {
                    Some(true) if !exists => {
                        return Err(StoreError::NotFound { kind, name: name() })
                    }
                    Some(false) if exists => return Err(StoreError::Exists { kind, name: name() }),
                    _ => {}
                }
                table.insert(key, bytes.as_slice()).map_err(db_err)?;
            }
            tx.commit().map_err(db_err)
        })
    }

    /// Remove `key` (only if its value is `expected`, when given); whether it was removed.
    pub(crate) fn delete(
        &self,
        def: TableDefinition<&str, &[u8]>,
        key: &str,
        expected: Option<&[u8]>,
    ) -> Result<bool> {
        self.with_db(true, |db| {
            let tx = db.begin_write().map_err(db_err)?;
            let removed = {
                let mut table = tx.open_table(def).map_err(db_err)?;
                let matches = match expected {
                    Some(want) => table
                        .get(key)
                        .map_err(db_err)?
                        .is_some_and(|v| v.value() == want),
                    None => true,
                };
                matches && table.remove(key).map_err(db_err)?.is_some()
            };
            tx.commit().map_err(db_err)?;
            Ok(removed)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
            image_ref: None,
        }
    }

    /// The same key every time it is asked for.
    pub(crate) fn key() -> SecretsKey {
        SecretsKey::parse(&"11".repeat(32)).unwrap()
    }

    #[test]
    fn functions_and_secrets_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), key()).unwrap();
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
        let s = Store::open(dir.path(), key()).unwrap();
        assert_eq!(s.functions().unwrap().len(), 1);
        let a = s.function("a").unwrap().unwrap();
        let mut other = a.clone();
        other.replicas = 2;
        assert!(!s.delete_function_if(&other).unwrap());
        assert!(s.delete_function_if(&a).unwrap());
        s.create_function(&a).unwrap();
        assert_eq!(s.secret("k").unwrap().unwrap().as_slice(), b"w");
        assert_eq!(s.secret_names().unwrap(), vec!["k".to_string()]);
        assert!(s.delete_function("a").unwrap());
        assert!(!s.delete_function("a").unwrap());
        let mode = fs::metadata(dir.path().join("state.redb"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn stored_replicas_beyond_the_cap_are_clamped_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), key()).unwrap();
        let mut f = function("big");
        f.replicas = u64::MAX;
        f.deployment.labels =
            Some([("com.openfaas.scale.max".into(), u64::MAX.to_string())].into());
        s.create_function(&f).unwrap();
        let mut d = function("default");
        d.replicas = 50;
        s.create_function(&d).unwrap();
        let mut g = function("capped");
        g.replicas = 50;
        g.deployment.labels = Some([("com.openfaas.scale.max".into(), "5".into())].into());
        s.create_function(&g).unwrap();
        assert_eq!(s.function("big").unwrap().unwrap().replicas, MAX_REPLICAS);
        let all = s.functions().unwrap();
        let replicas: Vec<u64> = all.iter().map(|f| f.replicas).collect();
        assert_eq!(replicas, [MAX_REPLICAS, 5, 20]);
    }

    #[test]
    fn secrets_are_sealed_and_open_only_with_their_key_under_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = Store::open(dir.path(), key()).unwrap();
            s.put_secret("a", b"needle-of-a", true).unwrap();
            s.put_secret("b", b"needle-of-b", true).unwrap();
        }
        let bytes = fs::read(&path).unwrap();
        assert!(!bytes.windows(11).any(|w| w == b"needle-of-a"));
        let e = Store::open(dir.path(), SecretsKey::random()).err().unwrap();
        assert!(matches!(e, StoreError::WrongKey(_)), "{e}");
        assert!(e.to_string().contains("sealed with another key"), "{e}");
        // A's sealed value copied over b's does not open as b.
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(SEALED_SECRETS).unwrap();
                let a = t.get("a").unwrap().unwrap().value().to_vec();
                t.insert("b", a.as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        let e = Store::open(dir.path(), key()).err().unwrap();
        assert!(e.to_string().contains("secret \"b\""), "{e}");
    }
}
