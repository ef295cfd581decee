//! `virga login` / `virga logout`: check credentials (a password or an API token) against
//! `GET /system/info` and store or forget them for one gateway.

use std::io::Read;

use anyhow::{bail, Context, Result};
use virga_types::GatewayInfo;

use crate::client::Client;
use crate::config::{self, Auth, Credentials, DEFAULT_USER};

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
    /// Sign in with an API token instead (visible to other local users: prefer
    /// --token-stdin).
    #[arg(long, conflicts_with_all = ["password", "password_stdin", "token_stdin"])]
    pub token: Option<String>,
    /// Read an API token from stdin.
    #[arg(long, conflicts_with_all = ["password", "password_stdin"])]
    pub token_stdin: bool,
}

/// Run `virga login`.
pub fn login(gateway: &str, args: LoginArgs) -> Result<()> {
    if args.token.is_some() || args.token_stdin {
        let token = read_secret(args.token, args.token_stdin, "login", "token")?;
        return login_token(gateway, token);
    }
    let password = read_password(
        args.password,
        args.password_stdin,
        &format!("login -u {}", args.username),
    )?;
    let creds = Credentials {
        username: args.username,
        password,
    };

    let client = Client::with_credentials(gateway, Some(Auth::Basic(creds.clone())))?;
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

/// Check `token` against the gateway and store it.
fn login_token(gateway: &str, token: String) -> Result<()> {
    let client = Client::with_credentials(gateway, Some(Auth::Token(token.clone())))?;
    println!("Calling the gateway at {}", client.base());
    let info: GatewayInfo = client.get_json("/system/info", "checking the token")?;
    let path = config::save_token(client.base(), &token)?;
    println!(
        "Token saved for {} to {} (provider {}, gateway {})",
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
    read_secret(given, stdin, usage, "password")
}

/// A `what` (password or token) given with `--WHAT` (warning that it is visible) or on
/// stdin.
fn read_secret(given: Option<String>, stdin: bool, usage: &str, what: &str) -> Result<String> {
    let secret = match (given, stdin) {
        (Some(p), _) => {
            eprintln!(
                "WARNING! Using --{what} is insecure, consider: \
                 cat ~/{what}.txt | virga {usage} --{what}-stdin"
            );
            p
        }
        (None, true) => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .with_context(|| format!("cannot read the {what} from stdin"))?;
            text.trim().to_string()
        }
        (None, false) => bail!("give the {what} with --{what}-stdin (or --{what})"),
    };
    if secret.is_empty() {
        bail!("the {what} is empty");
    }
    Ok(secret)
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
