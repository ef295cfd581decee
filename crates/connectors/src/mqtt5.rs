//! The MQTT 5 side of the MQTT connector (`--mqtt-version 5`): the same persistent session
//! (clean start off, a session that outlives the connection), QoS 1 and PUBACK only once the
//! calls are durable, plus what MQTT 5 adds: Virga tells the broker its receive maximum (the
//! unacked messages it may hold), user properties become headers, and a message's response
//! topic is where its answer is published.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

use crate::mqtt::{
    endpoint, matching, queue_all, read, still_on, took_one, wanted, Endpoint, Link, MqttConfig,
    Routes, NAME,
};
use crate::{Connector, Core, Message};

/// Unacked messages the broker may send (MQTT 5's receive maximum).
const RECEIVE_MAXIMUM: u16 = 256;
/// How long the broker keeps the session (and its messages) while Virga is away: a day.
const SESSION_EXPIRY_SECS: u32 = 86_400;

struct Mqtt5 {
    client: AsyncClient,
}

impl Connector for Mqtt5 {
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

fn options(cfg: &MqttConfig) -> Result<MqttOptions, String> {
    let Endpoint {
        host,
        port,
        transport,
    } = endpoint(cfg)?;
    let mut o = MqttOptions::new(&cfg.client_id, host, port);
    let props = ConnectProperties {
        session_expiry_interval: Some(SESSION_EXPIRY_SECS),
        receive_maximum: Some(RECEIVE_MAXIMUM),
        max_packet_size: Some(64 << 20),
        ..ConnectProperties::new()
    };
    o.set_clean_start(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(15))
        .set_connect_properties(props)
        .set_transport(transport);
    if let Some((u, p)) = &cfg.user {
        o.set_credentials(u, p);
    }
    Ok(o)
}

/// Connect (in the background, retrying) and follow `core`'s table.
pub(crate) fn start(core: Arc<Core>, cfg: MqttConfig) -> Result<Arc<dyn Connector>, String> {
    let (client, events) = AsyncClient::new(options(&cfg)?, 64);
    // Known before the first connect, which subscribes to them: a message the broker kept
    // for the session may come at once.
    let routes: Routes = Arc::new(RwLock::new(wanted(&core)));
    let link = Link::new(cfg.url, " (MQTT 5)");
    let job = Job {
        core: core.clone(),
        client: client.clone(),
        routes: routes.clone(),
        in_flight: Arc::new(AtomicUsize::new(0)),
        link: link.number(),
    };
    tokio::spawn(poll(job, events, link));
    tokio::spawn(reconcile(core, client.clone(), routes));
    Ok(Arc::new(Mqtt5 { client }))
}

/// Drive the connection, as the 3.1.1 connector does.
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
                    rumqttc::v5::ConnectionError::ConnectionRefused(code) => {
                        Some(format!("{code:?}"))
                    }
                    _ => None,
                };
                link.failed(&job.core, refused, &e).await;
            }
        }
    }
}

/// What handling one message needs.
#[derive(Clone)]
struct Job {
    core: Arc<Core>,
    client: AsyncClient,
    routes: Routes,
    in_flight: Arc<AtomicUsize>,
    /// The broker connection's number (see [`Link`]).
    link: Arc<AtomicU64>,
}

impl Job {
    /// Queue `p` for its functions, then PUBACK it, in a task of its own.
    fn take(&self, p: Publish) {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        let functions = matching(&self.routes, &topic);
        took_one(&self.in_flight);
        let on = self.link.load(Ordering::SeqCst);
        let job = self.clone();
        tokio::spawn(async move {
            let props = p.properties.as_ref();
            let mut headers: Vec<(String, Vec<u8>)> = props
                .map(|pr| {
                    pr.user_properties
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(ct) = props.and_then(|pr| pr.content_type.clone()) {
                headers.push(("content-type".into(), ct.into_bytes()));
            }
            let msg = Message {
                topic,
                id: (p.pkid != 0).then(|| p.pkid.to_string()),
                body: p.payload.clone(),
                reply: props.and_then(|pr| pr.response_topic.clone()),
                headers,
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
        let old: Vec<String> = read(&routes).keys().cloned().collect();
        let added: Vec<String> = wanted
            .keys()
            .filter(|f| !old.contains(f))
            .cloned()
            .collect();
        let gone: Vec<String> = old
            .into_iter()
            .filter(|f| !wanted.contains_key(f))
            .collect();
        *routes.write().unwrap_or_else(|e| e.into_inner()) = wanted;
        for f in added {
            if let Err(e) = client.subscribe(f.clone(), QoS::AtLeastOnce).await {
                tracing::warn!(topic = %f, "mqtt connector: subscribe: {e}");
            }
        }
        for f in gone {
            if let Err(e) = client.unsubscribe(f.clone()).await {
                tracing::warn!(topic = %f, "mqtt connector: unsubscribe: {e}");
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
