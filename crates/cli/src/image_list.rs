//! `virga images`: the platform's cached registry images with their sizes and the functions
//! pinned to each (`GET /system/virga/images`); `virga images prune` removes those no
//! function uses (`POST /system/virga/images/prune`).

use anyhow::{Context, Result};
use reqwest::Method;
use serde::Deserialize;

use crate::client::Client;
use crate::functions::print_table;

/// Options of `virga images`.
#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    /// Print the gateway's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<ImagesCommand>,
}

/// What to do with the images.
#[derive(Debug, clap::Subcommand)]
pub enum ImagesCommand {
    /// Remove the images (and their blobs and layers) no function is pinned to.
    Prune,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    digest: String,
    references: Vec<String>,
    size: u64,
    unpacked_size: u64,
    functions: Vec<String>,
}

#[derive(Deserialize)]
struct Pruned {
    images: usize,
    bytes: u64,
}

/// Run `virga images [prune]`.
pub fn run(client: &Client, args: ImagesArgs) -> Result<()> {
    if let Some(ImagesCommand::Prune) = args.command {
        let what = "pruning images";
        let resp = client.send_ok(
            client.request(Method::POST, "/system/virga/images/prune"),
            what,
        )?;
        let text = resp
            .text()
            .with_context(|| format!("{what}: cannot read the answer"))?;
        if args.json {
            println!("{}", text.trim_end());
        } else {
            let p: Pruned = serde_json::from_str(&text).with_context(|| {
                format!("{what}: the gateway's answer is not the expected JSON")
            })?;
            println!("removed {} images, {} freed", p.images, size(p.bytes));
        }
        return Ok(());
    }
    let (path, what) = ("/system/virga/images", "listing images");
    if args.json {
        println!("{}", client.get_text(path, what)?.trim_end());
        return Ok(());
    }
    let entries: Vec<Entry> = client.get_json(path, what)?;
    let mut rows = vec![["IMAGE", "DIGEST", "SIZE", "UNPACKED", "FUNCTIONS"]
        .map(String::from)
        .to_vec()];
    for e in entries {
        rows.push(vec![
            e.references.join(", "),
            e.digest.chars().take(19).collect(),
            size(e.size),
            size(e.unpacked_size),
            e.functions.join(", "),
        ]);
    }
    print_table(&rows);
    Ok(())
}

/// Bytes in the largest unit that keeps the number at least 1.
fn size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}
