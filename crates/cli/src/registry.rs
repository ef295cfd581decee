//! `virga registry login HOST`: check a user name and password against a registry and store
//! them in a Docker-style `config.json` (mode 0600): the client's (the file `docker login`
//! writes, which `virga push` reads) or, with `--data-dir`, the platform's (what `virga up`
//! pulls with).

use anyhow::{bail, Result};
use virga_oci::{Credentials, OciError, RegistryConfig};

use crate::oci_build::RegistryArgs;

/// `virga registry` commands.
#[derive(Debug, clap::Subcommand)]
pub enum RegistryCommand {
    /// Check credentials against a registry and store them.
    Login(LoginArgs),
}

/// Options of `virga registry login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// The registry's host (and port), e.g. ghcr.io or 127.0.0.1:5000.
    pub host: String,
    /// User name.
    #[arg(short, long)]
    pub username: String,
    /// Read the password (or token) from stdin.
    #[arg(short = 's', long, conflicts_with = "password")]
    pub password_stdin: bool,
    /// The password (visible to other local users: prefer --password-stdin).
    #[arg(short, long)]
    pub password: Option<String>,
    /// Store them for the platform whose data directory this is (DIR/registry/config.json,
    /// what `virga up --data-dir DIR` pulls with) instead of in --registry-config.
    #[arg(long, value_name = "DIR", conflicts_with = "registry_config")]
    pub data_dir: Option<std::path::PathBuf>,
    /// Registry options.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Run a `virga registry` command.
pub fn run(command: RegistryCommand) -> Result<()> {
    match command {
        RegistryCommand::Login(args) => login(args),
    }
}

fn login(args: LoginArgs) -> Result<()> {
    let password = crate::login::read_password(
        args.password,
        args.password_stdin,
        "registry login HOST -u USER",
    )?;
    let creds = Credentials {
        username: args.username,
        password,
    };
    check(&args.registry, &args.host, &creds)?;
    let path = match &args.data_dir {
        Some(dir) => dir.join("registry/config.json"),
        None => args.registry.config_path()?,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut config = RegistryConfig::load(&path)?;
    config.set(&args.host, &creds);
    config.save(&path)?;
    println!(
        "Login succeeded: credentials of {} for {} saved to {}",
        creds.username,
        args.host,
        path.display()
    );
    Ok(())
}

/// Ask the registry for a repository with these credentials: an unknown repository means
/// they were accepted, a 401 or 403 that they were not.
fn check(reg: &RegistryArgs, host: &str, creds: &Credentials) -> Result<()> {
    let store = reg.store()?;
    let probe = format!("{host}/virga-login-check:latest");
    let rt = crate::oci_build::runtime()?;
    match rt.block_on(store.resolve(&probe, Some(creds))) {
        Ok(_) | Err(OciError::NotFound { .. }) => Ok(()),
        Err(e @ (OciError::Unauthorized { .. } | OciError::Forbidden { .. })) => {
            bail!("{host} refused user {:?}: {e}", creds.username)
        }
        Err(e) => Err(e.into()),
    }
}
