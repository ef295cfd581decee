//! Async calls in the CLI: opening the queue for `virga up` (`--queue embedded` or
//! `--queue nats://HOST:PORT`, with its limits and callback settings), `virga queue` (depth,
//! in-flight and dead letters per queue) and `virga dead-letters list|retry ID|purge`, each one
//! call to the gateway's `/system/virga/` API.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::Method;
use virga_gateway::{AppState, AsyncConfig};
use virga_queue::embedded::{Embedded, EmbeddedConfig};
use virga_queue::nats::{Nats, NatsConfig};
use virga_queue::{
    CallbackPolicy, DeadLetterInfo, Limits, PoolConfig, PoolCounters, Queue, QueueStats,
};

use crate::client::{ensure_success, Client};
use crate::functions::print_table;

/// Options of `virga up` for async calls.
#[derive(Debug, Clone, clap::Args)]
pub struct AsyncArgs {
    /// Largest request body of an async call, in bytes (413 beyond); also the most of a
    /// function's answer kept for its callback. 1 MiB is NATS's default max_payload too.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_async_body_bytes: usize,
    /// Async calls waiting in all, results waiting for their callback included (429 beyond).
    #[arg(long, default_value_t = 1_000_000)]
    pub async_max_depth: u64,
    /// Bytes of async calls (and results) waiting in all (429 beyond).
    #[arg(long, default_value_t = 1 << 30)]
    pub async_max_bytes: u64,
    /// Async calls (and results) waiting per function (429 beyond).
    #[arg(long, default_value_t = 100_000)]
    pub async_max_depth_per_function: u64,
    /// Bytes of async calls (and results) waiting per function (429 beyond; with NATS the
    /// per-function limit is the depth only).
    #[arg(long, default_value_t = 256 << 20)]
    pub async_max_bytes_per_function: u64,
    /// Dead letters kept; beyond, the oldest are dropped.
    #[arg(long, default_value_t = 10_000)]
    pub max_dead_letters: u64,
    /// How long a failed callback is retried (backoff up to a minute between attempts)
    /// before its result becomes a dead letter, e.g. 30m, 6h, 48h.
    #[arg(long, default_value = "6h", value_parser = duration)]
    pub callback_retry_for: Duration,
    /// Let callbacks reach any address, loopback and private networks included.
    #[arg(long)]
    pub callback_allow_private: bool,
    /// An internal network callbacks may reach (CIDR, e.g. 10.1.0.0/16); repeat it or
    /// separate several with commas.
    #[arg(long, value_delimiter = ',')]
    pub callback_allow_cidr: Vec<ipnet::IpNet>,
}

fn duration(v: &str) -> Result<Duration, String> {
    virga_types::duration::parse(v)
}

impl AsyncArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_depth: self.async_max_depth,
            max_bytes: self.async_max_bytes,
            max_depth_per_function: self.async_max_depth_per_function,
            max_bytes_per_function: self.async_max_bytes_per_function,
            max_dead_letters: self.max_dead_letters,
        }
    }

    fn config(&self) -> AsyncConfig {
        let policy = CallbackPolicy {
            allow_private: self.callback_allow_private,
            allowed: self.callback_allow_cidr.clone(),
        };
        AsyncConfig {
            pool: PoolConfig {
                callback_retry_for: self.callback_retry_for,
                callback_policy: Arc::new(policy),
                ..PoolConfig::default()
            },
            max_body_bytes: self.max_async_body_bytes,
        }
    }
}

/// Open the queue `spec` names and start its workers on the gateway `state`.
pub async fn start(
    state: &Arc<AppState>,
    spec: &str,
    data_dir: &Path,
    args: &AsyncArgs,
) -> Result<()> {
    let queue = if spec == "embedded" {
        let dir = data_dir.join("queue");
        let cfg = EmbeddedConfig {
            limits: args.limits(),
            ..EmbeddedConfig::new(dir.clone())
        };
        Queue::Embedded(Box::new(Embedded::open(cfg).with_context(|| {
            format!("open the async-call queue in {}", dir.display())
        })?))
    } else if spec.starts_with("nats://") {
        let cfg = NatsConfig {
            limits: args.limits(),
            ..NatsConfig::new(spec)
        };
        Queue::Nats(Box::new(
            Nats::connect(cfg)
                .await
                .with_context(|| format!("open the async-call queue on {spec}"))?,
        ))
    } else {
        bail!("--queue {spec:?}: expected `embedded` or nats://HOST:PORT");
    };
    tracing::info!(backend = queue.backend(), "async-call queue ready");
    virga_gateway::enable_async(state, Arc::new(queue), args.config())
        .await
        .context("start the async-call workers")?;
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
    #[serde(default)]
    callbacks: QueueStats,
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
        "\nBackend: {}. Callbacks waiting: {}, being sent: {}.",
        r.backend, r.callbacks.depth, r.callbacks.inflight
    );
    println!(
        "Since start: {} completed, {} retries, {} dead-lettered; callbacks {} delivered, {} retried, {} failed.",
        c.completed, c.retried, c.dead_lettered, c.callbacks_delivered, c.callbacks_retried, c.callbacks_failed
    );
    Ok(())
}

/// `virga dead-letters` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DeadLetterCommand {
    /// List the calls whose attempts are exhausted (of every namespace, unless -n).
    #[command(alias = "ls")]
    List {
        /// Print the gateway's JSON.
        #[arg(long)]
        json: bool,
        /// Only the dead letters of this namespace's functions.
        #[command(flatten)]
        ns: crate::namespaces::NamespaceArg,
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
        DeadLetterCommand::List { json, ns } => {
            let ns = ns.get()?;
            let rb = client
                .request(Method::GET, PATH)
                .query(&crate::namespaces::ns_query(&ns));
            let resp = client.send_ok(rb, "listing dead letters")?;
            if json {
                let text = resp
                    .text()
                    .context("listing dead letters: cannot read the answer")?;
                println!("{}", text.trim_end());
                return Ok(());
            }
            let list: Vec<DeadLetterInfo> = resp
                .json()
                .context("listing dead letters: the gateway's answer is not the expected JSON")?;
            let mut rows = vec![vec![
                "Call id".to_string(),
                "Failed".to_string(),
                "Function".to_string(),
                "Queue".to_string(),
                "Attempts".to_string(),
                "Status".to_string(),
                "Reason".to_string(),
            ]];
            for d in &list {
                rows.push(vec![
                    d.id.clone(),
                    d.kind.clone(),
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
pub fn urlencode(s: &str) -> String {
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
