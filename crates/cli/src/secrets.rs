//! `virga secret create|update|list|remove`: manage the gateway's secrets
//! (`/system/secrets`) of one namespace (`-n`, in the body or `?namespace=` as faas-cli
//! sends it). Values come from `--from-literal`, `--from-file` or stdin.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode};
use virga_types::Secret;

use crate::client::{ensure_success, error_message, Client};
use crate::functions::print_table;
use crate::namespaces::{ns_query, NamespaceArg};

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
        /// Whose secrets to list.
        #[command(flatten)]
        ns: NamespaceArg,
    },
    /// Remove a secret.
    #[command(alias = "rm")]
    Remove {
        /// Secret name.
        name: String,
        /// The secret's namespace.
        #[command(flatten)]
        ns: NamespaceArg,
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
    /// The secret's namespace (functions only see their own namespace's secrets).
    #[command(flatten)]
    pub ns: NamespaceArg,
}

/// Run a `virga secret` subcommand.
pub fn run(client: &Client, cmd: SecretCommand) -> Result<()> {
    match cmd {
        SecretCommand::Create(args) => put(client, args, false),
        SecretCommand::Update(args) => put(client, args, true),
        SecretCommand::List { json, ns } => list(client, json, &ns.get()?),
        SecretCommand::Remove { name, ns } => remove(client, &name, &ns.get()?),
    }
}

fn secret_from(args: &ValueArgs) -> Result<Secret> {
    virga_types::validate_name("secret name", &args.name)?;
    let mut secret = Secret {
        name: args.name.clone(),
        namespace: args.ns.get()?,
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
    let (name, flag) = (&args.name, ns_flag(&secret.namespace));
    let method = if update { Method::PUT } else { Method::POST };
    let resp = client.send_json(method, "/system/secrets", &secret)?;
    let verb = if update { "updating" } else { "creating" };
    match resp.status() {
        StatusCode::CONFLICT if !update => {
            bail!(
                "secret {name} already exists: use `virga secret update {name}{flag}` to change it"
            )
        }
        StatusCode::NOT_FOUND if update => {
            let msg = error_message(&resp.text().unwrap_or_default());
            // A 404 about the namespace is the gateway's to explain.
            if msg.starts_with("namespace") {
                bail!("{verb} secret {name}: {msg}");
            }
            bail!("secret {name} does not exist: use `virga secret create {name}{flag}`")
        }
        _ => {}
    }
    ensure_success(resp, &format!("{verb} secret {name}"))?;
    println!(
        "{} secret {name}{}",
        if update { "Updated" } else { "Created" },
        in_namespace(&secret.namespace)
    );
    Ok(())
}

/// ` -n NS` to repeat in a suggested command (nothing for the default namespace).
fn ns_flag(ns: &str) -> String {
    if ns.is_empty() {
        String::new()
    } else {
        format!(" -n {ns}")
    }
}

/// ` in namespace NS` for messages (nothing for the default namespace).
fn in_namespace(ns: &str) -> String {
    if ns.is_empty() {
        String::new()
    } else {
        format!(" in namespace {ns}")
    }
}

fn list(client: &Client, json: bool, ns: &str) -> Result<()> {
    const WHAT: &str = "listing secrets";
    let rb = client
        .request(Method::GET, "/system/secrets")
        .query(&ns_query(ns));
    let resp = client.send_ok(rb, WHAT)?;
    if json {
        let text = resp
            .text()
            .with_context(|| format!("{WHAT}: cannot read the answer"))?;
        println!("{}", text.trim_end());
        return Ok(());
    }
    let mut secrets: Vec<Secret> = resp
        .json()
        .with_context(|| format!("{WHAT}: the gateway's answer is not the expected JSON"))?;
    secrets.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = vec![vec!["NAME".to_string()]];
    rows.extend(secrets.into_iter().map(|s| vec![s.name]));
    print_table(&rows);
    Ok(())
}

fn remove(client: &Client, name: &str, ns: &str) -> Result<()> {
    virga_types::validate_name("secret name", name)?;
    let body = serde_json::json!({ "name": name, "namespace": ns });
    let resp = client.send_json(Method::DELETE, "/system/secrets", &body)?;
    ensure_success(resp, &format!("removing secret {name}"))?;
    println!("Removed secret {name}{}", in_namespace(ns));
    Ok(())
}
