//! One error type for the crate. Each variant is one answer the gateway gives: the comment
//! names the HTTP status it stands for, so the mapping lives in one place there.

use thiserror::Error;

/// What can go wrong pulling, storing, building or pushing an image.
#[derive(Debug, Error)]
pub enum OciError {
    /// The image reference cannot be parsed (400).
    #[error("invalid image reference {reference:?}: {detail}")]
    BadReference {
        /// The reference as given.
        reference: String,
        /// Why it is refused.
        detail: String,
    },
    /// The registry has no such repository, tag or digest (404).
    #[error("image {reference} not found: {detail}")]
    NotFound {
        /// The reference asked for.
        reference: String,
        /// The registry's answer.
        detail: String,
    },
    /// The registry wants credentials, or refused the ones given (401).
    #[error("registry {registry} refused access to {reference} (401 Unauthorized): {detail}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// The reference asked for.
        reference: String,
        /// What to do about it.
        detail: String,
    },
    /// The credentials were accepted but do not allow this (403).
    #[error("registry {registry} denied access to {reference} (403 Forbidden): {detail}")]
    Forbidden {
        /// The registry host.
        registry: String,
        /// The reference asked for.
        reference: String,
        /// The registry's answer.
        detail: String,
    },
    /// The registry cannot be reached or failed (502).
    #[error("registry {registry} is unreachable or failed: {detail}")]
    Unreachable {
        /// The registry host.
        registry: String,
        /// The cause.
        detail: String,
    },
    /// Content the registry sent does not hash to its digest (502: refused, nothing kept).
    #[error("{what} does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob or manifest.
        what: String,
        /// The digest it was asked for by.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// A manifest, config or media type Virga cannot use (400).
    #[error("image {reference} cannot be used: {detail}")]
    BadImage {
        /// The reference asked for.
        reference: String,
        /// Why.
        detail: String,
    },
    /// A layer holds an entry that is refused (400; names the entry; nothing is kept).
    #[error("layer {layer} refused: {detail}")]
    BadLayer {
        /// The layer's blob digest.
        layer: String,
        /// The entry and what is wrong with it.
        detail: String,
    },
    /// Over a configured limit (413; nothing is kept).
    #[error("{0}")]
    TooLarge(String),
    /// The image is for another platform than this machine's (400).
    #[error("image {reference} is for {found}, not {wanted}")]
    WrongPlatform {
        /// The reference asked for.
        reference: String,
        /// The platform this machine runs, e.g. `linux/amd64`.
        wanted: String,
        /// What the image offers, e.g. `linux/arm64` or a list.
        found: String,
    },
    /// The image or blob is not in the local store (404; pull it first).
    #[error("{0} is not in the image store; pull it first")]
    NotCached(String),
    /// The build input cannot be packed (400: names the path).
    #[error("cannot build a layer: {0}")]
    BadInput(String),
    /// The store's disk is full (507; nothing was changed).
    #[error(
        "the image store's disk is full ({0}): nothing was kept; free some space and try again"
    )]
    Full(String),
    /// The file system failed (500).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
}

impl OciError {
    /// Wrap an I/O error with what was being done; a full disk becomes [`OciError::Full`].
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> OciError {
        let context = context.into();
        move |source| {
            if is_disk_full(&source) {
                OciError::Full(context)
            } else {
                OciError::Io { context, source }
            }
        }
    }
}

/// Whether `e` says the disk is full (also when wrapped by the tar crate, which keeps the kind).
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || matches!(
            e.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        )
}

/// Result of this crate's operations.
pub type Result<T> = std::result::Result<T, OciError>;
