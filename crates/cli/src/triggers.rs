//! `virga triggers [--json]`: every function's subscriptions and schedules, with the last and
//! next run, from `GET /system/virga/triggers`.

use anyhow::Result;
use virga_connectors::TriggerInfo;

use crate::client::Client;
use crate::functions::print_table;

const PATH: &str = "/system/virga/triggers";

/// Run `virga triggers`.
pub fn show(client: &Client, json: bool) -> Result<()> {
    if json {
        println!("{}", client.get_text(PATH, "listing triggers")?.trim_end());
        return Ok(());
    }
    let list: Vec<TriggerInfo> = client.get_json(PATH, "listing triggers")?;
    let mut rows = vec![[
        "Function",
        "Connector",
        "Topic",
        "Schedule",
        "Last run",
        "Next run",
    ]
    .map(str::to_string)
    .to_vec()];
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for t in &list {
        let connector = if t.enabled {
            t.connector.clone()
        } else {
            format!("{} (off)", t.connector)
        };
        let topic = match &t.stream {
            Some(s) => format!("{} (stream {s})", t.topic),
            None => t.topic.clone(),
        };
        rows.push(vec![
            t.function.clone(),
            connector,
            topic,
            dash(&t.schedule),
            dash(&t.last_run),
            dash(&t.next_run),
        ]);
    }
    print_table(&rows);
    Ok(())
}
