//! virga-watchdog: the small process manager inside every Virga function
//! instance, configured like the OpenFaaS classic watchdog and of-watchdog
//! (`fprocess`, `mode`, `upstream_url`, timeouts, `max_inflight`, ...).
//!
//! Use [`Config::from_env`] and [`run`], or [`Server::bind`] +
//! [`Server::serve`] to control the listener and shutdown yourself.

pub mod body;
pub mod cgi;
pub mod config;
pub mod init;
pub mod lambda;
pub mod logger;
pub mod process;
pub mod proxy;
pub mod serializing;
pub mod server;
pub mod spawn;
pub mod streaming;
pub mod zygote;

pub use config::{Config, ConfigError, Mode};
pub use server::{run, shutdown_signal, Server};

/// Errors that stop the watchdog.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listener could not be bound.
    #[error("failed to bind {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: std::net::SocketAddr,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Other I/O failure.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
