//! The `virga-watchdog` binary: reads the OpenFaaS-style environment, logs to
//! stderr with tracing, and runs the watchdog until SIGTERM/SIGINT.

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = virga_watchdog::Config::from_env().context("invalid watchdog configuration")?;
    let rt = if std::env::var("XRT").is_ok() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(virga_watchdog::run(config))
        .context("watchdog failed")?;
    Ok(())
}
