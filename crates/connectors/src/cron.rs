//! The cron connector (always on): one task per scheduled function sleeps until its next
//! run and queues one call then. The next run is always computed from now, so runs missed
//! while Virga was down are not replayed. Each run's call id is `cron-FUNCTION-TICKMS`, the
//! queue's deduplication key: two gateways sharing one JetStream queue both fire, JetStream
//! keeps one.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use futures_util::future::BoxFuture;
use tokio::task::JoinHandle;

use crate::spec::{Schedule, CRON_TOPIC};
use crate::{Connector, Core, Message};

/// The connector's name.
pub const NAME: &str = "cron";

struct Cron;

impl Connector for Cron {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish<'a>(&'a self, _topic: &'a str, _body: Bytes) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async { Err("cron has no broker to publish to".to_string()) })
    }
}

/// Start the scheduler over `core`'s table.
pub(crate) fn start(core: Arc<Core>) -> Arc<dyn Connector> {
    tokio::spawn(reconcile(core));
    Arc::new(Cron)
}

/// Keep one task per schedule, restarting it when the schedule changes.
async fn reconcile(core: Arc<Core>) {
    let mut changes = core.table.watch();
    let mut running: HashMap<String, (String, JoinHandle<()>)> = HashMap::new();
    loop {
        let mut wanted: HashMap<String, (String, Schedule)> = HashMap::new();
        for (function, spec) in core.table.snapshot() {
            if let Some((text, s)) = &spec.schedule {
                let tz = match s {
                    Schedule::Cron { tz, .. } => tz.to_string(),
                    Schedule::Every(_) => String::new(),
                };
                wanted.insert(function, (format!("{text} {tz}"), s.clone()));
            }
        }
        running.retain(|f, (key, task)| {
            let keep = wanted.get(f).is_some_and(|(k, _)| k == key);
            if !keep {
                task.abort();
            }
            keep
        });
        for (function, (key, schedule)) in wanted {
            running.entry(function.clone()).or_insert_with(|| {
                let task = tokio::spawn(ticks(core.clone(), function, schedule));
                (key, task)
            });
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Queue a call of `function` at each run of `schedule`.
async fn ticks(core: Arc<Core>, function: String, schedule: Schedule) {
    while let Some(next) = schedule.next_after(Utc::now()) {
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).await;
        let tick = next.timestamp_millis();
        let msg = Message {
            topic: CRON_TOPIC.into(),
            id: Some(tick.to_string()),
            body: Bytes::new(),
            reply: None,
            headers: vec![("x-scheduled-time".into(), next.to_rfc3339().into_bytes())],
        };
        let key = format!("cron-{function}-{tick}");
        if let Err(e) = core
            .deliver(NAME, &function, CRON_TOPIC, &msg, Some(key))
            .await
        {
            tracing::warn!(%function, "cron: run at {next} not queued: {e}");
        }
    }
}
