//! `virga secret create|update|list|remove`: manage the gateway's secrets
//! (`/system/secrets`). Values come from `--from-literal`, `--from-file` or stdin.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode};
use virga_types::Secret;

use crate::client::{ensure_success, Client};
use crate::functions::print_table;

/// `virga secret` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Create a secret (value from --from-literal, --from-file or stdin).
    Create(ValueArgs),
    /// Replace the value of an existing secret.
    Update(ValueArgs),
    /// List secret names.
    #[command(alias = "ls")]
    List {
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret.
    #[command(alias = "rm")]
    Remove {
        /// Secret name.
        name: String,
    },
}

/// Name and value source of a secret.
#[derive(Debug, clap::Args)]
pub struct ValueArgs {
    /// Secret name (lower-case letters, digits and '-').
    pub name: String,
    /// The value, given on the command line.
    #[arg(long, conflicts_with = "from_file")]
    pub from_literal: Option<String>,
    /// Read the value (any bytes) from this file.
    #[arg(long)]
    pub from_file: Option<PathBuf>,
}

/// Run a `virga secret` subcommand.
pub fn run(client: &Client, cmd: SecretCommand) -> Result<()> {
    match cmd {
        SecretCommand::Create(args) => put(client, args, false),
        SecretCommand::Update(args) => put(client, args, true),
        SecretCommand::List { json } => list(client, json),
        SecretCommand::Remove { name } => remove(client, &name),
    }
}

fn secret_from(args: &ValueArgs) -> Result<Secret> {
    virga_types::validate_name("secret name", &args.name)?;
    let mut secret = Secret {
        name: args.name.clone(),
        ..Default::default()
    };
    if let Some(v) = &args.from_literal {
        secret.value = v.clone();
    } else if let Some(path) = &args.from_file {
        secret.raw_value =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    } else {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("Reading the secret value from STDIN - hit (Control + D) to stop.");
        }
        let mut text = String::new();
        stdin
            .lock()
            .read_to_string(&mut text)
            .context("cannot read the secret value from stdin")?;
        secret.value = text.trim_end_matches(['\n', '\r']).to_string();
    }
    if secret.value.is_empty() && secret.raw_value.is_empty() {
        bail!("the value of secret {} is empty", args.name);
    }
    Ok(secret)
}

fn put(client: &Client, args: ValueArgs, update: bool) -> Result<()> {
    let secret = secret_from(&args)?;
    let method = if update { Method::PUT } else { Method::POST };
    let resp = client.send_json(method, "/system/secrets", &secret)?;
    match resp.status() {
        StatusCode::CONFLICT if !update => bail!(
            "secret {} already exists: use `virga secret update {}` to change it",
            args.name,
            args.name
        ),
        StatusCode::NOT_FOUND if update => bail!(
            "secret {} does not exist: use `virga secret create {}`",
            args.name,
            args.name
        ),
        _ => {}
    }
    let verb = if update { "updating" } else { "creating" };
    ensure_success(resp, &format!("{verb} secret {}", args.name))?;
    println!(
        "{} secret {}",
        if update { "Updated" } else { "Created" },
        args.name
    );
    Ok(())
}

fn list(client: &Client, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            client
                .get_text("/system/secrets", "listing secrets")?
                .trim_end()
        );
        return Ok(());
    }
    let mut secrets: Vec<Secret> = client.get_json("/system/secrets", "listing secrets")?;
    secrets.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = vec![vec!["NAME".to_string()]];
    rows.extend(secrets.into_iter().map(|s| vec![s.name]));
    print_table(&rows);
    Ok(())
}

fn remove(client: &Client, name: &str) -> Result<()> {
    virga_types::validate_name("secret name", name)?;
    let body = serde_json::json!({ "name": name });
    let resp = client.send_json(Method::DELETE, "/system/secrets", &body)?;
    if resp.status() == StatusCode::NOT_FOUND {
        bail!("secret {name} not found on {}", client.base());
    }
    ensure_success(resp, &format!("removing secret {name}"))?;
    println!("Removed secret {name}");
    Ok(())
}
