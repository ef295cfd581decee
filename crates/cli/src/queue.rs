//! Async calls in the CLI: opening the queue for `virga up` (`--queue embedded` or
//! `--queue nats://HOST:PORT`), `virga queue` (depth, in-flight and dead letters per queue) and
//! `virga dead-letters list|retry ID|purge`, each one call to the gateway's `/system/virga/` API.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use reqwest::Method;
use virga_gateway::AppState;
use virga_queue::embedded::{Embedded, EmbeddedConfig};
use virga_queue::nats::{Nats, NatsConfig};
use virga_queue::{DeadLetterInfo, PoolConfig, PoolCounters, Queue, QueueStats};

use crate::client::{ensure_success, Client};
use crate::functions::print_table;

/// Open the queue `spec` names and start its workers on the gateway `state`.
pub async fn start(state: &Arc<AppState>, spec: &str, data_dir: &Path) -> Result<()> {
    let queue = if spec == "embedded" {
        let dir = data_dir.join("queue");
        Queue::Embedded(
            Embedded::open(EmbeddedConfig::new(dir.clone()))
                .with_context(|| format!("open the async-call queue in {}", dir.display()))?,
        )
    } else if spec.starts_with("nats://") {
        Queue::Nats(Box::new(
            Nats::connect(NatsConfig::new(spec))
                .await
                .with_context(|| format!("open the async-call queue on {spec}"))?,
        ))
    } else {
        bail!("--queue {spec:?}: expected `embedded` or nats://HOST:PORT");
    };
    tracing::info!(backend = queue.backend(), "async-call queue ready");
    virga_gateway::enable_async(state, Arc::new(queue), PoolConfig::default()).await;
    Ok(())
}

/// Options of `virga queue`.
#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// Print the gateway's JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Deserialize)]
struct QueuesReport {
    backend: String,
    queues: Vec<QueueStats>,
    #[serde(flatten)]
    counters: PoolCounters,
}

/// Run `virga queue`.
pub fn show(client: &Client, args: QueueArgs) -> Result<()> {
    let what = "reading the queues";
    if args.json {
        println!(
            "{}",
            client.get_text("/system/virga/queues", what)?.trim_end()
        );
        return Ok(());
    }
    let r: QueuesReport = client.get_json("/system/virga/queues", what)?;
    let mut rows = vec![vec![
        "Queue".to_string(),
        "Depth".to_string(),
        "In flight".to_string(),
        "Dead letters".to_string(),
    ]];
    for q in &r.queues {
        rows.push(vec![
            q.queue.clone(),
            q.depth.to_string(),
            q.inflight.to_string(),
            q.dead.to_string(),
        ]);
    }
    print_table(&rows);
    let c = &r.counters;
    println!(
        "\nBackend: {}. Since start: {} completed, {} retries, {} dead-lettered; callbacks {} delivered, {} failed.",
        r.backend, c.completed, c.retried, c.dead_lettered, c.callbacks_delivered, c.callbacks_failed
    );
    Ok(())
}

/// `virga dead-letters` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DeadLetterCommand {
    /// List the calls whose attempts are exhausted.
    #[command(alias = "ls")]
    List {
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a dead letter back on its queue (attempts start again).
    Retry {
        /// The call id.
        id: String,
    },
    /// Delete every dead letter.
    Purge,
}

/// Run `virga dead-letters ...`.
pub fn dead_letters(client: &Client, cmd: DeadLetterCommand) -> Result<()> {
    const PATH: &str = "/system/virga/dead-letters";
    match cmd {
        DeadLetterCommand::List { json: true } => {
            println!(
                "{}",
                client.get_text(PATH, "listing dead letters")?.trim_end()
            );
        }
        DeadLetterCommand::List { json: false } => {
            let list: Vec<DeadLetterInfo> = client.get_json(PATH, "listing dead letters")?;
            let mut rows = vec![vec![
                "Call id".to_string(),
                "Function".to_string(),
                "Queue".to_string(),
                "Attempts".to_string(),
                "Status".to_string(),
                "Reason".to_string(),
            ]];
            for d in &list {
                rows.push(vec![
                    d.id.clone(),
                    d.function.clone(),
                    d.queue.clone(),
                    d.attempts.to_string(),
                    d.status.to_string(),
                    d.reason.clone(),
                ]);
            }
            print_table(&rows);
        }
        DeadLetterCommand::Retry { id } => {
            let path = format!("{PATH}/{}/retry", urlencode(&id));
            let resp = client.send(client.request(Method::POST, &path))?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                bail!("no dead letter with call id {id:?} (see `virga dead-letters list`)");
            }
            ensure_success(resp, &format!("retrying {id}"))?;
            println!("Queued {id} again");
        }
        DeadLetterCommand::Purge => {
            let resp = client.send(client.request(Method::DELETE, PATH))?;
            let v: serde_json::Value = ensure_success(resp, "purging dead letters")?
                .json()
                .context("reading the gateway's answer")?;
            println!(
                "Purged {} dead letter(s)",
                v["purged"].as_u64().unwrap_or(0)
            );
        }
    }
    Ok(())
}

/// Percent-encode everything but unreserved URL characters.
fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
