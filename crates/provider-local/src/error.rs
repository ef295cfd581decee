//! The errors the provider reports to the gateway.

use std::time::Duration;

use thiserror::Error;

/// Errors the provider reports to the gateway.
#[derive(Debug, Error)]
pub enum ProviderError {
    /// No function of that name is running here.
    #[error("function {0:?} not found")]
    NotFound(String),
    /// No instance became ready in time.
    #[error("function {name:?} has no ready instance after {waited:?}: {reason}")]
    NotReady {
        /// Function name.
        name: String,
        /// How long the request waited.
        waited: Duration,
        /// What the instances were doing.
        reason: String,
    },
    /// Every instance is at its `max_inflight` and none freed up in time.
    #[error("function {name:?} is at capacity: every instance has {limit} requests in flight (max_inflight), waited {waited:?}")]
    AtCapacity {
        /// Function name.
        name: String,
        /// The per-instance limit.
        limit: usize,
        /// How long the request waited.
        waited: Duration,
    },
    /// The function's code or secrets could not be prepared.
    #[error("cannot prepare function {name:?}: {reason}")]
    Prepare {
        /// Function name.
        name: String,
        /// Why.
        reason: String,
    },
}
