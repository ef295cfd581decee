//! `virga calls [-n NS] [--json]`: the calls in progress on the gateway (sync calls and async
//! deliveries), from `GET /system/virga/calls`, the longest-running first.

use anyhow::{Context, Result};
use reqwest::Method;
use serde::Deserialize;

use crate::client::Client;
use crate::functions::print_table;
use crate::namespaces::{ns_query, NamespaceArg};

/// Options of `virga calls`.
#[derive(Debug, clap::Args)]
pub struct CallsArgs {
    /// Print the gateway's JSON.
    #[arg(long)]
    pub json: bool,
    /// Only the calls of this namespace's functions (default: every namespace you may read).
    #[command(flatten)]
    pub ns: NamespaceArg,
}

/// One call in progress, as the gateway shows it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallInfo {
    call_id: String,
    function: String,
    namespace: String,
    kind: String,
    method: String,
    path: String,
    #[serde(default)]
    instance: String,
    started: String,
    elapsed_seconds: f64,
}

/// Run `virga calls`.
pub fn show(client: &Client, args: CallsArgs) -> Result<()> {
    const WHAT: &str = "listing the calls in progress";
    let ns = args.ns.get()?;
    let rb = client
        .request(Method::GET, "/system/virga/calls")
        .query(&ns_query(&ns));
    let resp = client.send_ok(rb, WHAT)?;
    if args.json {
        let text = resp
            .text()
            .with_context(|| format!("{WHAT}: cannot read the answer"))?;
        println!("{}", text.trim_end());
        return Ok(());
    }
    let list: Vec<CallInfo> = resp
        .json()
        .with_context(|| format!("{WHAT}: the gateway's answer is not the expected JSON"))?;
    if list.is_empty() {
        println!("No calls in progress");
        return Ok(());
    }
    let mut rows = vec![[
        "Call id",
        "Function",
        "Namespace",
        "Kind",
        "Request",
        "Instance",
        "Started",
        "Elapsed",
    ]
    .map(String::from)
    .to_vec()];
    for c in list {
        rows.push(vec![
            c.call_id,
            c.function,
            c.namespace,
            c.kind,
            format!("{} {}", c.method, c.path),
            c.instance,
            c.started,
            elapsed(c.elapsed_seconds),
        ]);
    }
    print_table(&rows);
    Ok(())
}

/// `elapsed` seconds as `1h02m03s`, `2m03s` or `3.4s`.
fn elapsed(secs: f64) -> String {
    let whole = secs as u64;
    match whole {
        0..60 => format!("{secs:.1}s"),
        60..3600 => format!("{}m{:02}s", whole / 60, whole % 60),
        _ => format!("{}h{:02}m{:02}s", whole / 3600, whole / 60 % 60, whole % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_times_read_as_hours_minutes_seconds() {
        assert_eq!(elapsed(3.42), "3.4s");
        assert_eq!(elapsed(123.0), "2m03s");
        assert_eq!(elapsed(7384.5), "2h03m04s");
    }
}
