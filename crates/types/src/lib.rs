//! Shared types of the Virga platform: the OpenFaaS-compatible API bodies, name
//! validation and the content-addressed bundle reference. Every other crate takes its
//! types from here; nothing in this crate does I/O.

mod api;
mod bundle;
mod connection;
pub mod duration;
pub mod lambda;
mod resources;
mod scaling;
mod target;
mod tokens;
mod validate;
mod watchdog;

pub use api::*;
pub use bundle::*;
pub use connection::*;
pub use resources::*;
pub use scaling::*;
pub use target::{headers, Target};
pub use tokens::*;
pub use validate::*;
pub use watchdog::*;

/// The default namespace, named like OpenFaaS's; a request that names none means it.
pub const DEFAULT_NAMESPACE: &str = "openfaas-fn";

/// Path inside an instance where listed secrets appear (OpenFaaS's path).
pub const SECRETS_MOUNT: &str = "/var/openfaas/secrets";
