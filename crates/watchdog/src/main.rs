//! The `virga-watchdog` binary: reads the OpenFaaS-style environment, logs to
//! stderr with tracing, and runs the watchdog until SIGTERM/SIGINT. With `--zygote` it is
//! instead the client of a pre-forked interpreter (`zygote`).

use std::io::IsTerminal;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    // `--zygote SOCKET FALLBACK...`: the upstream command of a runtime forked by a zygote.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--zygote") && args.len() > 2 {
        std::process::exit(virga_watchdog::zygote::run(&args[2], &args[3..]));
    }
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
    // The per-request modes spend their time in the function process, not in the watchdog:
    // one thread serves them without cross-thread wake-ups (which cost most on a small,
    // shared machine). http mode proxies a long-lived server and uses every core. Lambda mode
    // hands one event at a time to its runtime: one thread too.
    let mut builder = match config.mode {
        virga_watchdog::Mode::Http => tokio::runtime::Builder::new_multi_thread(),
        virga_watchdog::Mode::Serializing
        | virga_watchdog::Mode::Streaming
        | virga_watchdog::Mode::Lambda => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    runtime
        .block_on(virga_watchdog::run(config))
        .context("watchdog failed")?;
    Ok(())
}
