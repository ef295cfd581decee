//! `virga token create|list|revoke` over `/system/virga/tokens`, and `virga audit` over
//! `/system/virga/audit`. A created token goes alone to stdout (so `$(virga token create
//! ...)` captures just it) and its description to stderr: the gateway shows it only once.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Method;
use virga_types::{AuditEntry, CreatedToken, TokenInfo, TokenRequest};

use crate::client::{ensure_success, Client};
use crate::functions::print_table;

const TOKENS: &str = "/system/virga/tokens";

/// `virga token` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create an API token; it is printed this once.
    Create(CreateArgs),
    /// List the tokens you may see (never their secrets).
    #[command(alias = "ls")]
    List {
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it is refused from now on.
    #[command(alias = "rm")]
    Revoke {
        /// The token's id (from `virga token list`).
        id: String,
    },
}

/// Options of `virga token create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// A name for the token (shown in the audit log as token:NAME).
    #[arg(long)]
    pub name: String,
    /// viewer, invoker, deployer or admin.
    #[arg(long)]
    pub role: String,
    /// A namespace it acts in (repeat for several); an admin token has them all.
    #[arg(short, long = "namespace", value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,
    /// How long it is valid, e.g. 720h; forever when left out.
    #[arg(long, value_name = "DURATION")]
    pub expires: Option<String>,
    /// Make it an AWS access key pair for the Lambda API too (key id = its id, secret key =
    /// the part after it); its secret is then kept sealed, not only hashed.
    #[arg(long)]
    pub access_key: bool,
    /// Print the gateway's JSON (the token included).
    #[arg(long)]
    pub json: bool,
}

/// Options of `virga audit`.
#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// How many of the newest entries to show.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Print the gateway's JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `virga token`.
pub fn run(client: &Client, command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Create(args) => create(client, args),
        TokenCommand::List { json } => list(client, json),
        TokenCommand::Revoke { id } => revoke(client, &id),
    }
}

fn shown(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn namespaces(t: &TokenInfo) -> String {
    t.namespaces
        .as_ref()
        .map_or_else(|| "(all)".to_string(), |l| l.join(","))
}

fn create(client: &Client, args: CreateArgs) -> Result<()> {
    let body = TokenRequest {
        name: args.name,
        role: args.role,
        namespaces: (!args.namespaces.is_empty()).then_some(args.namespaces),
        expires_in: args.expires,
        access_key: args.access_key,
    };
    let what = format!("creating token {}", body.name);
    let resp = client.send_json(Method::POST, TOKENS, &body)?;
    let text = ensure_success(resp, &what)?
        .text()
        .with_context(|| format!("{what}: cannot read the answer"))?;
    if args.json {
        println!("{}", text.trim_end());
        return Ok(());
    }
    let created: CreatedToken = serde_json::from_str(&text)
        .with_context(|| format!("{what}: the gateway's answer is not the expected JSON"))?;
    let t = &created.info;
    let expires = t.expires.as_ref().map_or("never".into(), shown);
    eprintln!(
        "Token {} (id {}, role {}, namespaces {}, expires {}); it is shown only this once:",
        t.name,
        t.id,
        t.role,
        namespaces(t),
        expires
    );
    println!("{}", created.token);
    if t.access_key {
        // Not printed again: stdout may be captured while stderr is on a screen.
        eprintln!(
            "As an AWS access key: AWS_ACCESS_KEY_ID={} and AWS_SECRET_ACCESS_KEY = the \
             token's part after vg_{}_",
            t.id, t.id
        );
    }
    Ok(())
}

fn list(client: &Client, json: bool) -> Result<()> {
    if json {
        println!("{}", client.get_text(TOKENS, "listing tokens")?.trim_end());
        return Ok(());
    }
    let tokens: Vec<TokenInfo> = client.get_json(TOKENS, "listing tokens")?;
    let now = Utc::now();
    let mut rows = vec![[
        "ID",
        "Name",
        "Role",
        "Namespaces",
        "Created",
        "Expires",
        "Created by",
        "Access key",
    ]
    .map(str::to_string)
    .to_vec()];
    for t in &tokens {
        let expires = match &t.expires {
            None => "never".to_string(),
            Some(at) if *at <= now => format!("{} (expired)", shown(at)),
            Some(at) => shown(at),
        };
        rows.push(vec![
            t.id.clone(),
            t.name.clone(),
            t.role.clone(),
            namespaces(t),
            shown(&t.created),
            expires,
            t.created_by.clone(),
            if t.access_key { "yes" } else { "no" }.to_string(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

fn revoke(client: &Client, id: &str) -> Result<()> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("{id:?} is not a token id: `virga token list` shows them");
    }
    let what = format!("revoking token {id}");
    let path = format!("{TOKENS}/{id}");
    let resp = client.send_ok(client.request(Method::DELETE, &path), &what)?;
    let t: TokenInfo = resp
        .json()
        .with_context(|| format!("{what}: the gateway's answer is not the expected JSON"))?;
    println!("Revoked token {} ({})", t.name, t.id);
    Ok(())
}

/// Run `virga audit`.
pub fn audit(client: &Client, args: AuditArgs) -> Result<()> {
    let path = format!("/system/virga/audit?limit={}", args.limit);
    if args.json {
        println!(
            "{}",
            client.get_text(&path, "reading the audit log")?.trim_end()
        );
        return Ok(());
    }
    let entries: Vec<AuditEntry> = client.get_json(&path, "reading the audit log")?;
    let mut rows = vec![["Time", "Who", "Action", "Target", "Status"]
        .map(str::to_string)
        .to_vec()];
    for e in &entries {
        rows.push(vec![
            shown(&e.time),
            e.who.clone(),
            e.action.clone(),
            e.target.clone().unwrap_or_else(|| "-".into()),
            e.status.to_string(),
        ]);
    }
    print_table(&rows);
    Ok(())
}
