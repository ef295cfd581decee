//! `virga-bench`: Virga's benchmark command. Each figure group (one module under
//! `figures/`) starts what it measures, drives it with `wrk`, and reports every figure as
//! a ratio to a baseline measured in the same run; the table goes to stdout and, with
//! `--markdown FILE`, into a markdown document. Every process it starts is stopped with
//! its process group when the benchmark ends, also on error.

mod bare_proxy;
mod fast_upstream;
mod figures;
mod grpc;
mod platform;
mod report;
mod runner;
mod ws_echo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use figures::{Ctx, Settings, GROUPS};
use platform::Bins;
use report::{Report, Section};
use runner::Wrk;

/// Benchmarks Virga, printing every figure as a ratio to a baseline measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "virga-bench", version)]
struct Cli {
    /// Shorter runs (a smoke test; noisier numbers).
    #[arg(long)]
    quick: bool,
    /// Also write the results as a markdown document to FILE.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// Run only these figure groups (gateway, classic); repeatable.
    #[arg(long, value_name = "GROUP")]
    only: Vec<String>,
    /// Directory holding `virga` and `virga-watchdog` [default: virga-bench's own].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Isolation of `virga up`'s instances: process, runc or auto (VIRGA_ISOLATION).
    #[arg(long, value_name = "MODE", default_value = "process")]
    isolation: String,
    /// Exit with status 1 when a figure misses its target.
    #[arg(long)]
    fail_on_miss: bool,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Serve `200 ok` on the port of $upstream_url (the fast upstream of the gateway figures).
    #[command(hide = true)]
    FastUpstream,
    /// Serve a gRPC echo over h2c on the port of $upstream_url (the gRPC figures' upstream).
    #[command(hide = true)]
    GrpcUpstream,
    /// Echo every WebSocket message on the port of $upstream_url (the connection figures'
    /// upstream).
    #[command(hide = true)]
    WsEcho,
    /// Proxy every request to TARGET with nothing but the hop (the classic figures' floor).
    #[command(hide = true)]
    BareProxy {
        /// `http://HOST:PORT` to forward to.
        target: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Sub::FastUpstream) => fast_upstream::serve().map(|()| ExitCode::SUCCESS),
        Some(Sub::GrpcUpstream) => grpc::serve_upstream().map(|()| ExitCode::SUCCESS),
        Some(Sub::WsEcho) => ws_echo::serve().map(|()| ExitCode::SUCCESS),
        Some(Sub::BareProxy { target }) => bare_proxy::serve(&target).map(|()| ExitCode::SUCCESS),
        None => bench(&cli),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("virga-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(cli: &Cli) -> Result<ExitCode> {
    for name in &cli.only {
        if !GROUPS.iter().any(|g| g.name == name) {
            let known: Vec<&str> = GROUPS.iter().map(|g| g.name).collect();
            bail!("unknown group {name:?} (known: {})", known.join(", "));
        }
    }
    let bins = Bins::locate(cli.bin_dir.as_deref())?;
    let work = tempfile::Builder::new()
        .prefix("virga-bench-")
        .tempdir()
        .context("create a scratch directory")?;
    runner::cleanup_on_signal(work.path().to_path_buf())?;
    let ctx = Ctx {
        bins,
        wrk: Wrk::new(work.path(), figures::BODY)?,
        settings: Settings::new(cli.quick),
        work: work.path().to_path_buf(),
        isolation: cli.isolation.clone(),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = report::load_average();
    if let Some(l) = load.filter(|&l| l > 0.5 * cores as f64) {
        eprintln!(
            "virga-bench: warning: the load average is {l:.2} on {cores} cores; other work will skew the figures"
        );
    }
    let mut report = Report {
        load_at_start: load.map_or_else(|| "unknown".into(), |l| format!("{l:.2}")),
        ..Report::default()
    };
    for group in GROUPS {
        if !cli.only.is_empty() && !cli.only.iter().any(|n| n == group.name) {
            continue;
        }
        eprintln!("== {}", group.title);
        let mut section = Section::new(group.title, group.about);
        if let Err(e) = (group.run)(&ctx, &mut section) {
            eprintln!("{}: FAILED: {e:#}", group.title);
            section.error = Some(format!("{e:#}"));
        }
        report.sections.push(section);
        if runner::interrupted() {
            bail!("interrupted");
        }
    }
    println!();
    print!("{}", report.text());
    let (missed, failed) = report.misses();
    println!(
        "\n{}",
        match (missed, failed) {
            (0, 0) => "all targets met".to_string(),
            _ => format!("{missed} figure(s) missed their target, {failed} group(s) failed"),
        }
    );
    if let Some(path) = &cli.markdown {
        report.write_markdown(path, figures::INTRO, &report::command_line())?;
        eprintln!("wrote {}", path.display());
    }
    Ok(if failed > 0 || (cli.fail_on_miss && missed > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
