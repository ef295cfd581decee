//! The NATS connector (`virga up --nats-url`): one subscription per NATS core subject (at most
//! once, as NATS core is: a message that arrives while Virga is down or too slow is lost), or
//! for a function with `virga.nats.stream`, a durable JetStream consumer of its own on that
//! stream (`virga-trigger-FUNCTION`), acked only once the call is durably queued, so a crash
//! redelivers. The client reconnects with backoff by itself; each loss is a log line and the
//! `virga_connector_connected` metric.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::tls::{self, TlsFiles};
use crate::{Connector, Core, Message};

/// The connector's name.
pub const NAME: &str = "nats";
/// Messages of one subscription being queued at once.
const IN_FLIGHT: usize = 256;
/// Unacked JetStream messages per consumer: what the broker hands out before it waits.
const MAX_ACK_PENDING: i64 = 512;
/// Messages the client buffers per core subscription before the server counts it slow.
const SUBSCRIPTION_CAPACITY: usize = 16_384;

/// How to reach the NATS server.
#[derive(Debug, Clone, Default)]
pub struct NatsConfig {
    /// `nats://HOST:PORT`, or `tls://HOST:PORT` for TLS (also used when the server requires
    /// it on `nats://`).
    pub url: String,
    /// User and password, if the server wants them.
    pub user: Option<(String, String)>,
    /// A token, if the server wants one.
    pub token: Option<String>,
    /// A `.creds` file (JWT and NKey).
    pub creds_file: Option<PathBuf>,
    /// TLS files; any of them makes TLS required.
    pub tls: TlsFiles,
}

/// Topics → the functions subscribed to them, shared with each subscription's task.
type Routes = Arc<RwLock<Vec<String>>>;

struct Nats {
    client: async_nats::Client,
}

impl Connector for Nats {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish<'a>(&'a self, topic: &'a str, body: Bytes) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.client
                .publish(topic.to_string(), body)
                .await
                .map_err(|e| e.to_string())?;
            self.client.flush().await.map_err(|e| e.to_string())
        })
    }
}

/// Connect (in the background, retrying with backoff) and follow `core`'s table; fails only
/// on settings that cannot work (a bad URL, an unreadable creds file).
pub(crate) async fn start(core: Arc<Core>, cfg: NatsConfig) -> Result<Arc<dyn Connector>, String> {
    let metrics = core.metrics.clone();
    let url = cfg.url.clone();
    // Whether the metric says "down" already: failed attempts count one disconnect, not each.
    let down = Arc::new(AtomicBool::new(false));
    let tls_config = tls::client_config(NAME, &cfg.tls)?;
    let mut opts = async_nats::ConnectOptions::new()
        .name("virga-connector")
        .retry_on_initial_connect()
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .tls_client_config((*tls_config).clone())
        .require_tls(cfg.tls.any())
        .event_callback(move |ev| {
            let (metrics, url, down) = (metrics.clone(), url.clone(), down.clone());
            async move { on_event(ev, &metrics, &url, &down) }
        });
    if let Some((u, p)) = cfg.user {
        opts = opts.user_and_password(u, p);
    }
    if let Some(t) = cfg.token {
        opts = opts.token(t);
    }
    if let Some(path) = &cfg.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| format!("NATS creds file {}: {e}", path.display()))?;
    }
    // With retry_on_initial_connect this returns at once and dials in the background.
    let client = opts
        .connect(cfg.url.as_str())
        .await
        .map_err(|e| format!("NATS {}: {e}", cfg.url))?;
    tokio::spawn(reconcile(core, client.clone()));
    Ok(Arc::new(Nats { client }))
}

/// Log a connection event in words that say what to do, and keep the metric.
fn on_event(ev: async_nats::Event, metrics: &virga_metrics::Metrics, url: &str, down: &AtomicBool) {
    match ev {
        async_nats::Event::Connected => {
            tracing::info!("nats connector: connected to {url}");
            down.store(false, Ordering::Relaxed);
            metrics.connector_connected(NAME, true);
        }
        async_nats::Event::Disconnected => {
            tracing::warn!("nats connector: lost {url}; reconnecting with backoff");
            down.store(true, Ordering::Relaxed);
            metrics.connector_connected(NAME, false);
        }
        async_nats::Event::ClientError(e) => {
            let e = e.to_string();
            if e.contains("authorization violation") {
                tracing::error!(
                    "nats connector: {url} refused the credentials (authorization violation): \
                     check --nats-user and the password (VIRGA_NATS_PASSWORD or \
                     --nats-password-file), the token or the creds file; retrying with backoff"
                );
            } else {
                tracing::warn!(
                    "nats connector: cannot connect to {url} ({e}); retrying with backoff"
                );
            }
            if !down.swap(true, Ordering::Relaxed) {
                metrics.connector_connected(NAME, false);
            }
        }
        other => tracing::warn!("nats connector: {other}"),
    }
}

/// A function's JetStream consumer: its stream and one subject (servers before 2.10 filter
/// on one subject per consumer).
#[derive(PartialEq, Eq, Clone, Hash)]
struct Want {
    function: String,
    stream: String,
    topic: String,
}

/// Keep the subscriptions and consumers the table asks for.
async fn reconcile(core: Arc<Core>, client: async_nats::Client) {
    let mut changes = core.table.watch();
    let mut subs: HashMap<String, (Routes, JoinHandle<()>)> = HashMap::new();
    let mut consumers: HashMap<Want, JoinHandle<()>> = HashMap::new();
    loop {
        let mut topics: HashMap<String, Vec<String>> = HashMap::new();
        let mut streams: Vec<Want> = Vec::new();
        for (function, spec) in core.table.snapshot() {
            match &spec.stream {
                None => {
                    for t in &spec.topics {
                        topics.entry(t.clone()).or_default().push(function.clone());
                    }
                }
                Some(s) => {
                    for t in &spec.topics {
                        streams.push(Want {
                            function: function.clone(),
                            stream: s.clone(),
                            topic: t.clone(),
                        });
                    }
                }
            }
        }
        subs.retain(|t, (routes, task)| match topics.remove(t) {
            Some(fns) => {
                *routes.write().unwrap_or_else(|e| e.into_inner()) = fns;
                true
            }
            None => {
                task.abort();
                false
            }
        });
        for (topic, fns) in topics {
            let routes: Routes = Arc::new(RwLock::new(fns));
            let task = tokio::spawn(subscribe(
                core.clone(),
                client.clone(),
                topic.clone(),
                routes.clone(),
            ));
            subs.insert(topic, (routes, task));
        }
        consumers.retain(|want, task| {
            let keep = streams.contains(want);
            if !keep {
                task.abort();
            }
            keep
        });
        for want in streams {
            consumers
                .entry(want.clone())
                .or_insert_with(|| tokio::spawn(consume(core.clone(), client.clone(), want)));
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// Queue every message on the core subject `topic` for the functions in `routes`.
async fn subscribe(core: Arc<Core>, client: async_nats::Client, topic: String, routes: Routes) {
    let mut sub = match client.subscribe(topic.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%topic, "nats connector: cannot subscribe: {e}");
            return;
        }
    };
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(m) = sub.next().await {
        let Ok(slot) = gate.clone().acquire_owned().await else {
            return;
        };
        let msg = Message {
            topic: m.subject.to_string(),
            id: m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string()),
            body: m.payload,
            reply: m.reply.map(|r| r.to_string()),
            headers: nats_headers(m.headers.as_ref()),
        };
        let fns = routes.read().unwrap_or_else(|e| e.into_inner()).clone();
        let (core, topic) = (core.clone(), topic.clone());
        tokio::spawn(async move {
            for f in fns {
                if let Err(e) = core.deliver(NAME, &f, &topic, &msg, None).await {
                    tracing::warn!(function = %f, "nats connector: {e}");
                }
            }
            drop(slot);
        });
    }
}

fn nats_headers(h: Option<&async_nats::HeaderMap>) -> Vec<(String, Vec<u8>)> {
    let Some(h) = h else { return Vec::new() };
    h.iter()
        .filter(|(k, _)| !k.to_string().starts_with("Nats-"))
        .flat_map(|(k, vs)| {
            vs.iter()
                .map(move |v| (k.to_string(), v.as_str().as_bytes().to_vec()))
        })
        .collect()
}

/// Queue a function's messages from its JetStream consumer, acking each once queued.
async fn consume(core: Arc<Core>, client: async_nats::Client, want: Want) {
    let js = jetstream::new(client);
    let mut wait = std::time::Duration::from_millis(200);
    loop {
        match consume_once(&core, &js, &want).await {
            Ok(()) => return,
            Err(e) => {
                let (function, stream) = (&want.function, &want.stream);
                tracing::warn!(%function, %stream, "nats connector: JetStream consumer: {e}; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// The durable consumer's name: the function and a digest of the subject (names cannot hold
/// `.`, `*` or `>`).
fn consumer_name(want: &Want) -> String {
    let hash = want.topic.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("virga-trigger-{}-{hash:016x}", want.function)
}

async fn consume_once(
    core: &Arc<Core>,
    js: &jetstream::Context,
    want: &Want,
) -> Result<(), String> {
    let name = consumer_name(want);
    let s = js
        .get_stream(&want.stream)
        .await
        .map_err(|e| e.to_string())?;
    let cfg = consumer::pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: want.topic.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    };
    let c: consumer::PullConsumer = s
        .get_or_create_consumer(&name, cfg)
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = c.messages().await.map_err(|e| e.to_string())?;
    let gate = Arc::new(Semaphore::new(MAX_ACK_PENDING as usize));
    while let Some(m) = messages.next().await {
        let m = m.map_err(|e| e.to_string())?;
        let Ok(slot) = gate.clone().acquire_owned().await else {
            return Ok(());
        };
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
        let msg = Message {
            topic: m.subject.to_string(),
            id: Some(format!("{}:{seq}", want.stream)),
            body: m.payload.clone(),
            reply: None,
            headers: nats_headers(m.headers.as_ref()),
        };
        let (core, function, topic) = (core.clone(), want.function.clone(), want.topic.clone());
        tokio::spawn(async move {
            match core.deliver(NAME, &function, &topic, &msg, None).await {
                Ok(()) => {
                    if let Err(e) = m.double_ack().await {
                        tracing::warn!(%function, "nats connector: ack: {e} (the message comes again)");
                    }
                }
                Err(e) => tracing::warn!(%function, "nats connector: {e}"),
            }
            drop(slot);
        });
    }
    Ok(())
}
