//! The MQTT connector (`virga up --mqtt-url`, MQTT 3.1.1): one persistent session (clean
//! session off, a fixed client id) subscribed with QoS 1 to every function's topics. Acks are
//! manual: the PUBACK of a message goes only once its calls are durably queued, so a crash
//! of Virga makes the broker send the message again (at least once). The broker hands out at
//! most its in-flight window of unacked messages (mosquitto's `max_inflight_messages`, 20 by
//! default), so memory stays bounded and the rest waits in the broker; the event loop itself
//! never waits on the queue (it must keep answering the broker's pings). A lost broker is
//! retried with backoff (a log line, the metric). `mqtts://` speaks TLS ([`crate::tls`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, TlsConfiguration, Transport,
};

use crate::tls::{self, TlsFiles};
use crate::{Connector, Core, Message};

/// The connector's name.
pub const NAME: &str = "mqtt";
/// Unacked messages beyond which a warning says the broker's window is too large.
const WARN_IN_FLIGHT: usize = 10_000;

/// How to reach the MQTT broker.
#[derive(Debug, Clone, Default)]
pub struct MqttConfig {
    /// `mqtt://HOST:PORT`, or `mqtts://HOST:PORT` for TLS.
    pub url: String,
    /// The session's client id: fixed, so the broker keeps the session across restarts.
    pub client_id: String,
    /// User and password, if the broker wants them.
    pub user: Option<(String, String)>,
    /// Speak MQTT 5 (else 3.1.1).
    pub v5: bool,
    /// TLS files (`mqtts://` only).
    pub tls: TlsFiles,
}

/// Topic filters → the functions subscribed to them.
pub(crate) type Routes = Arc<RwLock<BTreeMap<String, Vec<String>>>>;

struct Mqtt {
    client: AsyncClient,
}

impl Connector for Mqtt {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish<'a>(&'a self, topic: &'a str, body: Bytes) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.client
                .publish_bytes(topic, QoS::AtLeastOnce, false, body)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Where the broker is and how to speak to it.
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    /// TCP, or TLS for `mqtts://`.
    pub(crate) transport: Transport,
}

/// The broker's endpoint from `mqtt://HOST:PORT` or `mqtts://HOST:PORT` (and the TLS files).
pub(crate) fn endpoint(cfg: &MqttConfig) -> Result<Endpoint, String> {
    let url = url::Url::parse(&cfg.url).map_err(|e| format!("MQTT URL {:?}: {e}", cfg.url))?;
    let (transport, default_port) = match url.scheme() {
        "mqtt" | "tcp" if cfg.tls.any() => {
            return Err(format!(
                "MQTT URL {:?}: the TLS files (--mqtt-ca, --mqtt-cert, --mqtt-key) need an \
                 mqtts://HOST:PORT URL",
                cfg.url
            ))
        }
        "mqtt" | "tcp" => (Transport::tcp(), 1883),
        "mqtts" | "ssl" => {
            let config = tls::client_config(NAME, &cfg.tls)?;
            (
                Transport::tls_with_config(TlsConfiguration::Rustls(config)),
                8883,
            )
        }
        _ => {
            return Err(format!(
                "MQTT URL {:?}: use mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS",
                cfg.url
            ))
        }
    };
    let host = url
        .host_str()
        .ok_or_else(|| format!("MQTT URL {:?} has no host", cfg.url))?;
    Ok(Endpoint {
        host: host.to_string(),
        port: url.port().unwrap_or(default_port),
        transport,
    })
}

fn options(cfg: &MqttConfig) -> Result<MqttOptions, String> {
    let Endpoint {
        host,
        port,
        transport,
    } = endpoint(cfg)?;
    let mut o = MqttOptions::new(&cfg.client_id, host, port);
    o.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(15))
        .set_max_packet_size(64 << 20, 64 << 20)
        .set_transport(transport);
    if let Some((u, p)) = &cfg.user {
        o.set_credentials(u, p);
    }
    Ok(o)
}

/// Why a connection attempt failed, in words that say what to do when the broker refused
/// Virga's credentials.
fn refused(url: &str, code: &str) -> String {
    if code.contains("UserName") || code.contains("Auth") {
        format!(
            "{url} refused the credentials ({code}): check --mqtt-user and the password \
             (VIRGA_MQTT_PASSWORD or --mqtt-password-file)"
        )
    } else {
        format!("{url} refused the connection ({code})")
    }
}

/// Connect (in the background, retrying) and follow `core`'s table.
pub(crate) fn start(core: Arc<Core>, cfg: MqttConfig) -> Result<Arc<dyn Connector>, String> {
    if cfg.v5 {
        return crate::mqtt5::start(core, cfg);
    }
    let (client, events) = AsyncClient::new(options(&cfg)?, 64);
    // Known before the first connect, which subscribes to them: a message the broker kept
    // for the session may come at once.
    let routes: Routes = Arc::new(RwLock::new(wanted(&core)));
    let link = Link::new(cfg.url, "");
    let job = Job {
        core: core.clone(),
        client: client.clone(),
        routes: routes.clone(),
        in_flight: Arc::new(AtomicUsize::new(0)),
        link: link.number(),
    };
    tokio::spawn(poll(job, events, link));
    tokio::spawn(reconcile(core, client.clone(), routes));
    Ok(Arc::new(Mqtt { client }))
}

/// Drive the connection: hand each publish to a task of its own, resubscribe on each
/// connect, and on errors wait (with backoff) before the event loop dials again.
async fn poll(job: Job, mut events: EventLoop, mut link: Link) {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => job.take(p),
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                link.connected(&job.core);
                let filters: Vec<String> = read(&job.routes).keys().cloned().collect();
                let client = job.client.clone();
                tokio::spawn(async move {
                    for f in filters {
                        let _ = client.subscribe(f, QoS::AtLeastOnce).await;
                    }
                });
            }
            Ok(_) => {}
            Err(e) => {
                let refused = match &e {
                    rumqttc::ConnectionError::ConnectionRefused(code) => Some(format!("{code:?}")),
                    _ => None,
                };
                link.failed(&job.core, refused, &e).await;
            }
        }
    }
}

/// One broker connection's state, for both MQTT versions: what the logs say, the
/// `connected` metric and the reconnect backoff. Each connect and each loss also moves the
/// connection's number on: a PUBACK is sent only on the connection its message came on,
/// since packet ids are per connection (a late one on the next connection could ack another
/// message the broker sent there, before it is queued). An unacked message comes again.
pub(crate) struct Link {
    url: String,
    /// Appended to the connected line (` (MQTT 5)`).
    version: &'static str,
    wait: Duration,
    up: bool,
    /// The connection's number, shared with the tasks that ack its messages.
    number: Arc<AtomicU64>,
}

impl Link {
    const FIRST_WAIT: Duration = Duration::from_millis(100);

    /// Not connected yet.
    pub(crate) fn new(url: String, version: &'static str) -> Link {
        Link {
            url,
            version,
            wait: Self::FIRST_WAIT,
            up: false,
            number: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The connection's number: it moves on at each connect and each loss.
    pub(crate) fn number(&self) -> Arc<AtomicU64> {
        self.number.clone()
    }

    /// The broker accepted the connection.
    pub(crate) fn connected(&mut self, core: &Core) {
        self.number.fetch_add(1, Ordering::SeqCst);
        tracing::info!("mqtt connector: connected to {}{}", self.url, self.version);
        core.metrics.connector_connected(NAME, true);
        (self.up, self.wait) = (true, Self::FIRST_WAIT);
    }

    /// The connection failed (`refusal`: the broker's reason code): say why, then wait
    /// before the event loop dials again, longer each time up to 5 s.
    pub(crate) async fn failed(
        &mut self,
        core: &Core,
        refusal: Option<String>,
        e: &(dyn std::fmt::Display + Sync),
    ) {
        self.number.fetch_add(1, Ordering::SeqCst);
        let (url, wait) = (&self.url, self.wait);
        if let Some(code) = refusal {
            tracing::error!(
                "mqtt connector: {}; retrying in {wait:?}",
                refused(url, &code)
            );
        } else if self.up {
            tracing::warn!("mqtt connector: lost {url} ({e}); reconnecting with backoff");
        } else {
            tracing::warn!("mqtt connector: cannot reach {url} ({e}); retrying in {wait:?}");
        }
        if self.up || wait == Self::FIRST_WAIT {
            core.metrics.connector_connected(NAME, false);
        }
        self.up = false;
        tokio::time::sleep(wait).await;
        self.wait = (wait * 2).min(Duration::from_secs(5));
    }
}

pub(crate) fn read(
    routes: &Routes,
) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Vec<String>>> {
    routes.read().unwrap_or_else(|e| e.into_inner())
}

/// What handling one message needs.
#[derive(Clone)]
struct Job {
    core: Arc<Core>,
    client: AsyncClient,
    routes: Routes,
    /// Messages taken and not acked yet.
    in_flight: Arc<AtomicUsize>,
    /// The broker connection's number (see [`Link`]).
    link: Arc<AtomicU64>,
}

/// The functions (with the matching filter) a message on `topic` goes to: one call per
/// function, even when several of its filters match.
pub(crate) fn matching(routes: &Routes, topic: &str) -> BTreeMap<String, String> {
    read(routes)
        .iter()
        .filter(|(filter, _)| rumqttc::matches(topic, filter))
        .flat_map(|(filter, fns)| fns.iter().map(|f| (f.clone(), filter.clone())))
        .collect()
}

/// Whether the broker connection is still number `on` (the one a message came on); if not,
/// its PUBACK is left out and the broker sends it again.
pub(crate) fn still_on(link: &AtomicU64, on: u64) -> bool {
    let same = link.load(Ordering::SeqCst) == on;
    if !same {
        tracing::debug!("mqtt connector: a message queued after its connection ended: not acked");
    }
    same
}

/// Count a message taken; warn once when too many are unacked.
pub(crate) fn took_one(in_flight: &AtomicUsize) {
    let n = in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    if n == WARN_IN_FLIGHT {
        tracing::warn!(
            "mqtt connector: {n} messages unacked: lower the broker's in-flight window \
             (mosquitto: max_inflight_messages) to bound Virga's memory"
        );
    }
}

/// Queue `msg` for `functions`; false if one could not be (then it must not be acked).
pub(crate) async fn queue_all(
    core: &Core,
    functions: &BTreeMap<String, String>,
    msg: &Message,
) -> bool {
    for (f, filter) in functions {
        if let Err(e) = core.deliver(NAME, f, filter, msg, None).await {
            // Not acked: the broker sends it again after a reconnect.
            tracing::warn!(function = %f, "mqtt connector: {e}");
            return false;
        }
    }
    true
}

/// Every function's topics, as filters → functions.
pub(crate) fn wanted(core: &Core) -> BTreeMap<String, Vec<String>> {
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (function, spec) in core.table.snapshot() {
        for t in &spec.topics {
            wanted.entry(t.clone()).or_default().push(function.clone());
        }
    }
    wanted
}

impl Job {
    /// Queue `p` for the functions whose filters match it, then PUBACK it (in a task of its
    /// own: the event loop goes on).
    fn take(&self, p: Publish) {
        let functions = matching(&self.routes, &p.topic);
        took_one(&self.in_flight);
        let on = self.link.load(Ordering::SeqCst);
        let job = self.clone();
        tokio::spawn(async move {
            let msg = Message {
                topic: p.topic.clone(),
                id: (p.pkid != 0).then(|| p.pkid.to_string()),
                body: p.payload.clone(),
                reply: None,
                headers: Vec::new(),
            };
            if queue_all(&job.core, &functions, &msg).await && still_on(&job.link, on) {
                if let Err(e) = job.client.ack(&p).await {
                    tracing::warn!("mqtt connector: PUBACK: {e} (the broker sends it again)");
                }
            }
            job.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Subscribe to the filters the table asks for, unsubscribe from the others.
async fn reconcile(core: Arc<Core>, client: AsyncClient, routes: Routes) {
    let mut changes = core.table.watch();
    loop {
        let wanted = wanted(&core);
        let old: BTreeSet<String> = read(&routes).keys().cloned().collect();
        let new: BTreeSet<String> = wanted.keys().cloned().collect();
        *routes.write().unwrap_or_else(|e| e.into_inner()) = wanted;
        for f in new.difference(&old) {
            if let Err(e) = client.subscribe(f.clone(), QoS::AtLeastOnce).await {
                tracing::warn!(topic = %f, "mqtt connector: subscribe: {e}");
            }
        }
        for f in old.difference(&new) {
            if let Err(e) = client.unsubscribe(f.clone()).await {
                tracing::warn!(topic = %f, "mqtt connector: unsubscribe: {e}");
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
