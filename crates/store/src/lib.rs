//! Durable state of the platform, kept in one data directory: namespaces, functions and
//! secrets (sealed under a key kept elsewhere), API tokens (hashes only) and the audit log in
//! an embedded redb database (every write is a committed, fsync'd transaction), and function
//! code as content-addressed bundles on disk. Everything the gateway accepted is here, so a
//! restarted `virga up` (even after kill -9) finds it all again.

mod audit;
mod beneath;
mod bundles;
mod db;
mod migrate;
mod namespaces;
mod sealed;
mod tokens;
mod unpack;

pub use beneath::read_beneath;

pub use audit::AUDIT_KEPT;
pub use bundles::Bundles;
pub use db::{Store, StoredFunction};
pub use namespaces::Namespace;
pub use sealed::SecretsKey;
pub use tokens::{TokenCheck, TOKEN_PREFIX};
pub use unpack::UnpackLimits;

use thiserror::Error;

/// What can go wrong in the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The thing to create already exists.
    #[error("{kind} {name:?} already exists")]
    Exists {
        /// "function" or "secret".
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The thing to change does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// "function" or "secret".
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// An uploaded bundle is not what its name says, or holds what a bundle may not.
    #[error("bundle rejected: {0}")]
    BadBundle(String),
    /// An uploaded bundle unpacks to more than the limits allow.
    #[error("bundle rejected: {0}")]
    TooLarge(String),
    /// The data directory's file system is full: nothing was changed.
    #[error("the data directory's disk is full ({0}): nothing was changed; free some space and try again")]
    Full(String),
    /// The database cannot read or write right now (an I/O error; it is reopened on the
    /// next use).
    #[error("the store cannot read or write: {0}")]
    Unavailable(String),
    /// The secrets key cannot be used (malformed, unreadable, or a key file others may read).
    #[error("{0}")]
    Key(String),
    /// The stored secrets do not open with the key given.
    #[error("{0}")]
    WrongKey(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(String),
    /// The file system failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl StoreError {
    /// Wrap an I/O error with what was being done; a full disk becomes [`StoreError::Full`].
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| {
            if is_disk_full(&source) {
                StoreError::Full(context)
            } else {
                StoreError::Io { context, source }
            }
        }
    }

    /// Whether the disk, not the request, is at fault (full or failing).
    pub fn is_storage_failure(&self) -> bool {
        matches!(self, StoreError::Full(_) | StoreError::Unavailable(_))
    }
}

/// Whether `e` says the disk is full: ENOSPC or EDQUOT, also when wrapped (the tar crate
/// keeps the kind, not the errno).
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
}

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;
