//! The subscription table: every function's triggers, built from its annotations, with the
//! last run per trigger. Connectors watch its generation and reconcile their subscriptions
//! when it changes (deploy, update, remove take effect at once).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use chrono::{TimeZone, Utc};
use serde::Serialize;
use tokio::sync::watch;

use crate::spec::{Schedule, Spec};

/// One row of `GET /system/virga/triggers`: a function's subscription or schedule.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TriggerInfo {
    /// Function name.
    pub function: String,
    /// `cron`, `nats` or `mqtt`.
    pub connector: String,
    /// The topic (`cron-function` for a schedule).
    pub topic: String,
    /// The schedule, for cron.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The JetStream stream, for NATS topics read from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Where answers are published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_topic: Option<String>,
    /// Whether the connector is enabled on this gateway.
    pub enabled: bool,
    /// When it last queued a call, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<String>,
    /// When it runs next (cron), RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_run: Option<String>,
}

/// One function's triggers and when each last fired (ms since the epoch, by connector).
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) spec: Arc<Spec>,
    last: BTreeMap<&'static str, i64>,
}

/// Every function's triggers.
#[derive(Debug)]
pub struct Table {
    entries: Mutex<BTreeMap<String, Entry>>,
    generation: watch::Sender<u64>,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            entries: Mutex::new(BTreeMap::new()),
            generation: watch::channel(0).0,
        }
    }
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Set (or with `None` drop) `function`'s triggers and tell the connectors.
    pub fn set(&self, function: &str, spec: Option<Spec>) {
        {
            let mut entries = self.lock();
            match spec {
                Some(spec) => {
                    let last = entries.remove(function).map(|e| e.last).unwrap_or_default();
                    let spec = Arc::new(spec);
                    entries.insert(function.to_string(), Entry { spec, last });
                }
                None => {
                    entries.remove(function);
                }
            }
        }
        self.generation.send_modify(|g| *g += 1);
    }

    /// A receiver that sees every change.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Every function with its triggers.
    pub(crate) fn snapshot(&self) -> Vec<(String, Arc<Spec>)> {
        self.lock()
            .iter()
            .map(|(k, e)| (k.clone(), e.spec.clone()))
            .collect()
    }

    /// `function`'s triggers, if it has any.
    pub(crate) fn spec(&self, function: &str) -> Option<Arc<Spec>> {
        self.lock().get(function).map(|e| e.spec.clone())
    }

    /// `connector` queued a call of `function` at `ms`.
    pub(crate) fn ran(&self, function: &str, connector: &'static str, ms: i64) {
        if let Some(e) = self.lock().get_mut(function) {
            e.last.insert(connector, ms);
        }
    }

    /// The rows of the triggers API; `enabled` says which connectors are on.
    pub fn list(&self, enabled: &dyn Fn(&str) -> bool) -> Vec<TriggerInfo> {
        let now = Utc::now();
        let stamp = |ms: i64| {
            Utc.timestamp_millis_opt(ms)
                .single()
                .map(|t| t.to_rfc3339())
        };
        let mut rows = Vec::new();
        for (function, e) in self.lock().iter() {
            let last = |c: &str| e.last.get(c).and_then(|ms| stamp(*ms));
            if let Some((text, schedule)) = &e.spec.schedule {
                let tz = match schedule {
                    Schedule::Cron { tz, .. } if *tz != chrono_tz::Tz::UTC => {
                        format!(" ({tz})")
                    }
                    _ => String::new(),
                };
                rows.push(TriggerInfo {
                    function: function.clone(),
                    connector: "cron".into(),
                    topic: crate::spec::CRON_TOPIC.into(),
                    schedule: Some(format!("{text}{tz}")),
                    stream: None,
                    reply_topic: e.spec.reply_topic.clone(),
                    enabled: true,
                    last_run: last("cron"),
                    next_run: schedule.next_after(now).map(|t| t.to_rfc3339()),
                });
            }
            for connector in ["nats", "mqtt"] {
                for topic in &e.spec.topics {
                    rows.push(TriggerInfo {
                        function: function.clone(),
                        connector: connector.into(),
                        topic: topic.clone(),
                        schedule: None,
                        stream: (connector == "nats")
                            .then(|| e.spec.stream.clone())
                            .flatten(),
                        reply_topic: e.spec.reply_topic.clone(),
                        enabled: enabled(connector),
                        last_run: last(connector),
                        next_run: None,
                    });
                }
            }
        }
        rows
    }
}
