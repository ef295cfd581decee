//! `virga logs NAME`: prints a function's log lines from `GET /system/logs` as
//! `TIMESTAMP INSTANCE TEXT` (or the gateway's JSON lines with `--json`); `-f` keeps the
//! stream open and prints new lines as they come, until Ctrl-C.

use std::io::{BufRead, BufReader, Write};

use anyhow::{Context, Result};
use reqwest::Method;
use serde::Deserialize;

use crate::client::{ensure_success, Client};
use crate::namespaces::{target, NamespaceArg};

/// Options of `virga logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Function name.
    pub name: String,
    /// Keep printing new lines until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Print only the last N lines (of those kept).
    #[arg(long, value_name = "N")]
    pub tail: Option<u64>,
    /// Only lines newer than this: a duration (30s, 5m, 1h30m) or an RFC 3339 time.
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Only lines of this instance.
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// Print the gateway's JSON objects, one per line.
    #[arg(long)]
    pub json: bool,
    /// The function's namespace.
    #[command(flatten)]
    pub ns: NamespaceArg,
}

/// One line as the gateway sends it.
#[derive(Debug, Deserialize)]
struct Line {
    timestamp: String,
    instance: String,
    text: String,
}

/// Run `virga logs`.
pub fn run(client: &Client, args: LogsArgs) -> Result<()> {
    let ns = args.ns.get()?;
    let mut query: Vec<(&str, String)> = vec![("name", args.name.clone())];
    if !ns.is_empty() {
        query.push(("namespace", ns.clone()));
    }
    if let Some(n) = args.tail {
        query.push(("tail", n.to_string()));
    }
    if let Some(s) = &args.since {
        query.push(("since", s.clone()));
    }
    if let Some(i) = &args.instance {
        query.push(("instance", i.clone()));
    }
    if args.follow {
        query.push(("follow", "true".into()));
    }
    let rb = client
        .request_streaming(Method::GET, "/system/logs")
        .query(&query);
    let what = format!("logs of {}", target(&args.name, &ns));
    let resp = ensure_success(client.send(rb)?, &what)?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(resp).lines() {
        let line = line.with_context(|| format!("{what}: the stream broke"))?;
        if line.is_empty() {
            continue;
        }
        let printed = if args.json {
            line
        } else {
            match serde_json::from_str::<Line>(&line) {
                Ok(l) => format!("{} {} {}", l.timestamp, l.instance, l.text),
                Err(_) => line,
            }
        };
        // A closed stdout (`| head`) ends the command quietly.
        if writeln!(out, "{printed}")
            .and_then(|_| out.flush())
            .is_err()
        {
            break;
        }
    }
    Ok(())
}
