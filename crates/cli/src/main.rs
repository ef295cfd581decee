//! The `virga` binary: `virga up` runs the platform; every other command talks to a
//! gateway over its public HTTP API.

use clap::{Parser, Subcommand};

mod up;

/// Virga: a self-hosted serverless platform that speaks the OpenFaaS API.
#[derive(Debug, Parser)]
#[command(name = "virga", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the platform: gateway, store and local provider.
    Up(up::UpArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => up::run(args),
    }
}
