//! Event triggers: connectors inside `virga up` that turn broker messages and schedule ticks
//! into invocations through the durable async queue. One module per source behind the
//! [`Connector`] trait: [`cron`] (always on), [`nats`] (core subjects, or JetStream streams
//! when the function's annotation names one), [`mqtt`] (3.1.1 or 5, QoS 1, a persistent
//! session).
//!
//! The [`Table`] holds every function's triggers, built from its annotations ([`Spec`]); the
//! gateway sets it on deploy, update and remove, and the connectors reconcile their
//! subscriptions at once. A message becomes one [`Call`] per subscribed function, handed to
//! the gateway's [`Sink`] (the queue): a broker is acknowledged (MQTT PUBACK, JetStream ack)
//! only after the sink said the call is durable. A full queue holds the message back (the
//! rest waits in the broker); a body over the limit is dead-lettered with the reason.

pub mod cron;
mod message;
pub mod mqtt;
mod mqtt5;
pub mod nats;
pub mod spec;
mod table;
pub mod tls;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use virga_metrics::Metrics;
use virga_queue::{Call, QueueError};

pub use message::{Message, Refused, X_CONNECTOR, X_MESSAGE_ID, X_REPLY_TO, X_TOPIC};
pub use spec::{Schedule, Spec, SpecError};
pub use table::{Table, TriggerInfo};
pub use tls::TlsFiles;

/// Where connectors put calls: the gateway's durable queue.
pub trait Sink: Send + Sync + 'static {
    /// Store `call` on its function's queue; returns once it is durable. With `dedup`, a
    /// shared backend drops a second call with the same key (two gateways, one schedule).
    fn enqueue(&self, call: Call, dedup: Option<String>) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Store `call` straight as a dead letter with `status` and `reason`.
    fn dead_letter(
        &self,
        call: Call,
        status: u16,
        reason: String,
    ) -> BoxFuture<'_, Result<(), QueueError>>;
    /// The largest body a queued call may have.
    fn max_body_bytes(&self) -> usize;
}

/// A source of events: a broker connection or the scheduler.
pub trait Connector: Send + Sync + 'static {
    /// `cron`, `nats` or `mqtt`: the `X-Connector` header and the metrics' label.
    fn name(&self) -> &'static str;
    /// Publish a function's answer to `topic` (a reply subject or the reply topic).
    fn publish<'a>(&'a self, topic: &'a str, body: Bytes) -> BoxFuture<'a, Result<(), String>>;
}

/// A connector's settings cannot work (a bad URL, an unreadable credentials file).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TriggerError(pub String);

/// How `virga up` configured the connectors.
#[derive(Debug, Clone, Default)]
pub struct TriggersConfig {
    /// The NATS connector's settings, if it is on.
    pub nats: Option<nats::NatsConfig>,
    /// The MQTT connector's settings, if it is on.
    pub mqtt: Option<mqtt::MqttConfig>,
}

/// What every connector shares: the table, the sink, the metrics.
pub(crate) struct Core {
    pub(crate) table: Table,
    pub(crate) sink: Arc<dyn Sink>,
    pub(crate) metrics: Arc<Metrics>,
}

/// The running connectors and their table.
pub struct Triggers {
    core: Arc<Core>,
    connectors: Vec<Arc<dyn Connector>>,
}

impl Triggers {
    /// Start cron and the brokers' connectors `cfg` turns on over `table` (filled with the
    /// stored functions first: a message redelivered at once on connect must find its
    /// function), feeding `sink`. A broker that cannot be reached is retried in the background
    /// with backoff (HTTP keeps serving); only settings that cannot work fail here.
    pub async fn start(
        cfg: TriggersConfig,
        table: Table,
        sink: Arc<dyn Sink>,
        metrics: Arc<Metrics>,
    ) -> Result<Triggers, TriggerError> {
        let core = Arc::new(Core {
            table,
            sink,
            metrics,
        });
        let mut connectors: Vec<Arc<dyn Connector>> = vec![cron::start(core.clone())];
        if let Some(c) = cfg.nats {
            connectors.push(nats::start(core.clone(), c).await.map_err(TriggerError)?);
        }
        if let Some(c) = cfg.mqtt {
            connectors.push(mqtt::start(core.clone(), c).map_err(TriggerError)?);
        }
        Ok(Triggers { core, connectors })
    }

    /// The names of the connectors that are on.
    pub fn enabled(&self) -> Vec<&'static str> {
        self.connectors.iter().map(|c| c.name()).collect()
    }

    /// The subscription table (set it on deploy, update and remove).
    pub fn table(&self) -> &Table {
        &self.core.table
    }

    /// Every subscription and schedule, for the API.
    pub fn list(&self) -> Vec<TriggerInfo> {
        let on = self.enabled();
        self.core.table.list(&|c| on.contains(&c))
    }

    /// An attempt at `call` ended with `status` and `body`: count it if a connector made the
    /// call, and publish a successful answer to the message's reply subject and the
    /// function's reply topic.
    pub fn answered(&self, call: &Call, status: u16, body: &Bytes) {
        let Some(name) = message::header(call, X_CONNECTOR) else {
            return;
        };
        let Some(connector) = self.connectors.iter().find(|c| c.name() == name) else {
            return;
        };
        let ok = status < 400;
        let lag = virga_queue::unix_ms().saturating_sub(call.accepted_ms) as f64 / 1000.0;
        self.core
            .metrics
            .connector_invoked(connector.name(), &call.function, ok, lag);
        if !ok {
            return;
        }
        let mut targets: Vec<String> = Vec::new();
        if let Some(r) = message::header(call, X_REPLY_TO) {
            targets.push(r.to_string());
        }
        if let Some(t) = self
            .core
            .table
            .spec(&call.function)
            .and_then(|s| s.reply_topic.clone())
        {
            targets.push(t);
        }
        for topic in targets {
            // Cron has no broker: its functions' reply topics go to the first one that is on.
            let Some(c) = self
                .connectors
                .iter()
                .find(|c| c.name() == name && name != cron::NAME)
                .or_else(|| self.connectors.iter().find(|c| c.name() != cron::NAME))
                .cloned()
            else {
                continue;
            };
            let (body, function) = (body.clone(), call.function.clone());
            tokio::spawn(async move {
                if let Err(e) = c.publish(&topic, body).await {
                    tracing::warn!(%function, %topic, "publishing the answer failed: {e}");
                }
            });
        }
    }
}
