//! `virga login` / `virga logout`: check credentials against `GET /system/info` and store
//! or forget them for one gateway.

use std::io::Read;

use anyhow::{bail, Context, Result};
use virga_types::GatewayInfo;

use crate::client::Client;
use crate::config::{self, Credentials, DEFAULT_USER};

/// Options of `virga login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// User name.
    #[arg(short, long, default_value = DEFAULT_USER)]
    pub username: String,
    /// Read the password from stdin.
    #[arg(short = 's', long, conflicts_with = "password")]
    pub password_stdin: bool,
    /// The password (visible to other local users: prefer --password-stdin).
    #[arg(short, long)]
    pub password: Option<String>,
}

/// Run `virga login`.
pub fn login(gateway: &str, args: LoginArgs) -> Result<()> {
    let password = read_password(
        args.password,
        args.password_stdin,
        &format!("login -u {}", args.username),
    )?;
    let creds = Credentials {
        username: args.username,
        password,
    };

    let client = Client::with_credentials(gateway, Some(creds.clone()))?;
    println!("Calling the gateway at {}", client.base());
    let info: GatewayInfo = client
        .get_json("/system/info", "checking credentials")
        .map_err(|e| {
            if e.to_string().starts_with("unauthorised") {
                anyhow::anyhow!(
                    "the gateway at {} refused user {:?} with this password",
                    client.base(),
                    creds.username
                )
            } else {
                e
            }
        })?;
    let path = config::save_credentials(client.base(), &creds)?;
    println!(
        "Credentials saved for {} {} to {} (provider {}, gateway {})",
        creds.username,
        client.base(),
        path.display(),
        info.provider.provider,
        info.version.release
    );
    Ok(())
}

/// The password given with `--password` (warning that it is visible) or on stdin;
/// `usage` is the command to show in the warning (`virga USAGE --password-stdin`).
pub fn read_password(given: Option<String>, stdin: bool, usage: &str) -> Result<String> {
    let password = match (given, stdin) {
        (Some(p), _) => {
            eprintln!(
                "WARNING! Using --password is insecure, consider: \
                 cat ~/password.txt | virga {usage} --password-stdin"
            );
            p
        }
        (None, true) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the password from stdin")?;
            text.trim().to_string()
        }
        (None, false) => bail!("give the password with --password-stdin (or --password)"),
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

/// Run `virga logout`.
pub fn logout(gateway: &str) -> Result<()> {
    let gateway = config::normalise_gateway(gateway);
    if config::remove_credentials(&gateway)? {
        println!("Credentials removed for {gateway}");
    } else {
        println!("No credentials stored for {gateway}");
    }
    Ok(())
}
