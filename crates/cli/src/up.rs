//! `virga up`: runs the platform (owned by the lead; placeholder until wired).

/// Options of `virga up`.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Address the gateway listens on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
}

/// Run the platform until SIGINT/SIGTERM.
pub fn run(_args: UpArgs) -> anyhow::Result<()> {
    anyhow::bail!("not wired yet")
}
