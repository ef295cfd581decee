//! virga-watchdog: the small process manager inside every Virga function
//! instance, configured like the OpenFaaS classic watchdog and of-watchdog
//! (`fprocess`, `mode`, `upstream_url`, timeouts, `max_inflight`, ...).
//!
//! Use [`Config::from_env`] and [`run`], or [`Server::bind`] +
//! [`Server::serve`] to control the listener and shutdown yourself.
//!
//! Lambda mode (`mode=lambda`, [`lambda`]): `fprocess` is an unmodified AWS Lambda runtime,
//! started once with the Lambda environment (`AWS_LAMBDA_RUNTIME_API` and the rest), that
//! long-polls the Lambda Runtime API the watchdog serves on a loopback port of its own
//! (`lambda/runtime_api.rs`). Calls on the function port are raw invokes
//! (`X-Virga-Lambda-Invoke: 1`, from the gateway's Invoke API: body = event, answer = the
//! runtime's bytes; `lambda/raw.rs`) or function-URL requests (payload format 2.0 events and
//! result mapping; `lambda/event_url.rs`). `lambda/invoke.rs` queues them one at a time and
//! enforces the deadline, `lambda/runtime.rs` supervises the runtime process (restarted after
//! a timeout or a crash, with a backoff while its init fails), `lambda/logs.rs` keeps the log
//! tail of `X-Amz-Log-Type: Tail`, `lambda/stream.rs` relays streamed responses. Readiness
//! (`/_/health`) comes with the runtime's first `/next`.

pub mod body;
pub mod cgi;
pub mod config;
pub mod h2;
pub mod init;
pub mod lambda;
pub mod logger;
pub mod process;
pub mod proxy;
pub mod serializing;
pub mod server;
pub mod spawn;
pub mod streaming;
mod upgrade;
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
    /// The hand-off socket could not be bound.
    #[error("failed to listen for hand-offs on {path}: {source}")]
    Handoff {
        /// `handoff_socket`.
        path: std::path::PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Other I/O failure.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
