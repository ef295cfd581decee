//! Durable state of the platform, kept in one data directory: functions and secrets in an
//! embedded redb database (every write is a committed, fsync'd transaction), and function
//! code as content-addressed bundles on disk. Everything the gateway accepted is here, so a
//! restarted `virga up` (even after kill -9) finds it all again.

mod beneath;
mod bundles;
mod db;

pub use beneath::read_beneath;

pub use bundles::Bundles;
pub use db::{Store, StoredFunction};

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
    /// An uploaded bundle is not what its name says.
    #[error("bundle rejected: {0}")]
    BadBundle(String),
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
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }
}

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;
