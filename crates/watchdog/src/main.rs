//! The `virga-watchdog` binary: reads the OpenFaaS-style environment, logs to
//! stderr with tracing, and runs the watchdog until SIGTERM/SIGINT.

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    // As PID 1, fork a reaper first: this must happen before any thread exists.
    if let Some(code) = virga_watchdog::init::run_if_pid1() {
        std::process::exit(code);
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = virga_watchdog::Config::from_env().context("invalid watchdog configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    runtime
        .block_on(virga_watchdog::run(config))
        .context("watchdog failed")?;
    Ok(())
}
