//! The NATS JetStream backend, so several gateways can share one queue. Calls are published to
//! the work-queue stream `VIRGA_CALLS` on subject `virga.calls.QUEUE` (the publish returns once
//! the server has stored it); each named queue has a durable pull consumer `q-QUEUE` that every
//! gateway's workers pull from. A retry is a NAK with the backoff as delay, so the attempt
//! number is the stored attempts plus the server's delivery count. Dead letters are messages in
//! the stream `VIRGA_DEAD` (`virga.dead.QUEUE`), listed, retried and purged by sequence.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind, Context};
use futures_util::StreamExt;
use tokio::sync::Mutex;

use crate::codec::{decode_call, encode_call, get_dead, put_dead, Reader};
use crate::{Call, DeadLetter, Delivery, QueueError, QueueStats, Token};

const CALLS: &str = "VIRGA_CALLS";
const DEAD: &str = "VIRGA_DEAD";

fn nats_err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Nats(e.to_string())
}

/// Settings of the NATS backend.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URL, `nats://HOST:PORT`.
    pub url: String,
    /// How long a delivered call may stay unacknowledged before NATS hands it out again (a
    /// running delivery renews it every third of this; a crashed gateway's calls come back
    /// after it).
    pub ack_wait: Duration,
}

impl NatsConfig {
    /// Defaults for `url`.
    pub fn new(url: &str) -> Self {
        NatsConfig {
            url: url.to_string(),
            ack_wait: Duration::from_secs(10),
        }
    }
}

type Messages = Arc<Mutex<consumer::pull::Stream>>;

/// The JetStream queue.
pub struct Nats {
    js: Context,
    cfg: NatsConfig,
    calls: stream::Stream,
    dead: stream::Stream,
    consumers: Mutex<HashMap<String, Messages>>,
    dead_lock: Mutex<()>,
}

impl Nats {
    /// Connect to the server and create the streams if they are missing.
    pub async fn connect(cfg: NatsConfig) -> Result<Nats, QueueError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(cfg.url.as_str())
            .await
            .map_err(|e| QueueError::Nats(format!("cannot connect to {}: {e}", cfg.url)))?;
        let js = jetstream::new(client);
        let calls = js
            .get_or_create_stream(stream::Config {
                name: CALLS.into(),
                subjects: vec!["virga.calls.*".into()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                QueueError::Nats(format!(
                    "create stream {CALLS} (is JetStream on, nats-server -js?): {e}"
                ))
            })?;
        let dead = js
            .get_or_create_stream(stream::Config {
                name: DEAD.into(),
                subjects: vec!["virga.dead.*".into()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| QueueError::Nats(format!("create stream {DEAD}: {e}")))?;
        Ok(Nats {
            js,
            cfg,
            calls,
            dead,
            consumers: Mutex::new(HashMap::new()),
            dead_lock: Mutex::new(()),
        })
    }

    async fn publish(&self, subject: String, payload: Vec<u8>) -> Result<(), QueueError> {
        self.js
            .publish(subject, payload.into())
            .await
            .map_err(nats_err)?
            .await
            .map_err(nats_err)?;
        Ok(())
    }

    pub(crate) async fn enqueue(&self, call: Call) -> Result<(), QueueError> {
        self.publish(format!("virga.calls.{}", call.queue), encode_call(&call))
            .await
    }

    async fn messages(&self, queue: &str) -> Result<Messages, QueueError> {
        let mut map = self.consumers.lock().await;
        if let Some(m) = map.get(queue) {
            return Ok(m.clone());
        }
        let name = format!("q-{queue}");
        let consumer: consumer::PullConsumer = self
            .calls
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("virga.calls.{queue}"),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.cfg.ack_wait,
                    max_deliver: -1,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(nats_err)?;
        let stream = consumer
            .stream()
            .max_messages_per_batch(64)
            .messages()
            .await
            .map_err(nats_err)?;
        let m = Arc::new(Mutex::new(stream));
        map.insert(queue.to_string(), m.clone());
        Ok(m)
    }

    pub(crate) async fn receive(&self, queue: &str) -> Result<Delivery, QueueError> {
        let messages = self.messages(queue).await?;
        let mut messages = messages.lock().await;
        loop {
            let m = match messages.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(nats_err(e)),
                None => return Err(QueueError::Closed),
            };
            let delivered = m.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
            match decode_call(&m.message.payload) {
                Ok(call) => {
                    return Ok(Delivery {
                        attempt: call.attempts + delivered,
                        call,
                        token: Token::Nats(Box::new(m)),
                    })
                }
                Err(e) => {
                    tracing::error!(queue, "queue: dropping an unreadable NATS message: {e}");
                    let _ = m.ack_with(AckKind::Term).await;
                }
            }
        }
    }

    pub(crate) async fn ack(&self, m: &jetstream::Message) -> Result<(), QueueError> {
        m.ack().await.map_err(nats_err)
    }

    pub(crate) async fn progress(&self, m: &jetstream::Message) {
        if let Err(e) = m.ack_with(AckKind::Progress).await {
            tracing::debug!("queue: in-progress ack failed: {e}");
        }
    }

    pub(crate) fn progress_every(&self) -> Duration {
        (self.cfg.ack_wait / 3).max(Duration::from_millis(100))
    }

    pub(crate) async fn retry(
        &self,
        m: &jetstream::Message,
        delay: Duration,
    ) -> Result<(), QueueError> {
        m.ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(nats_err)
    }

    pub(crate) async fn dead_letter(
        &self,
        m: &jetstream::Message,
        d: DeadLetter,
    ) -> Result<(), QueueError> {
        let mut payload = Vec::new();
        put_dead(&mut payload, &d);
        self.publish(format!("virga.dead.{}", d.call.queue), payload)
            .await?;
        self.ack(m).await
    }

    /// Every dead letter with its stream sequence.
    async fn dead_with_seq(&self) -> Result<Vec<(u64, DeadLetter)>, QueueError> {
        let info = self.dead.get_info().await.map_err(nats_err)?;
        let mut out = Vec::new();
        if info.state.messages == 0 {
            return Ok(out);
        }
        for seq in info.state.first_sequence..=info.state.last_sequence {
            // Deleted sequences inside the range answer "not found": skip them.
            let Ok(msg) = self.dead.get_raw_message(seq).await else {
                continue;
            };
            match get_dead(&mut Reader::new(&msg.payload)) {
                Ok(d) => out.push((seq, d)),
                Err(e) => tracing::warn!(seq, "queue: unreadable dead letter: {e}"),
            }
        }
        Ok(out)
    }

    pub(crate) async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(self
            .dead_with_seq()
            .await?
            .into_iter()
            .map(|(_, d)| d)
            .collect())
    }

    pub(crate) async fn retry_dead_letter(
        &self,
        id: &str,
        now_ms: u64,
    ) -> Result<bool, QueueError> {
        let _guard = self.dead_lock.lock().await;
        let Some((seq, d)) = self
            .dead_with_seq()
            .await?
            .into_iter()
            .find(|(_, d)| d.call.id == id)
        else {
            return Ok(false);
        };
        let mut call = d.call;
        call.attempts = 0;
        call.accepted_ms = now_ms;
        self.enqueue(call).await?;
        self.dead.delete_message(seq).await.map_err(nats_err)?;
        Ok(true)
    }

    pub(crate) async fn purge_dead_letters(&self) -> Result<usize, QueueError> {
        let _guard = self.dead_lock.lock().await;
        let r = self.dead.purge().await.map_err(nats_err)?;
        Ok(r.purged as usize)
    }

    pub(crate) async fn known_queues(&self) -> Vec<String> {
        let mut names = self.calls.consumer_names();
        let mut out = Vec::new();
        while let Some(Ok(n)) = names.next().await {
            if let Some(q) = n.strip_prefix("q-") {
                out.push(q.to_string());
            }
        }
        out
    }

    pub(crate) async fn stats(&self) -> Result<Vec<QueueStats>, QueueError> {
        let mut out = Vec::new();
        for queue in self.known_queues().await {
            let info = self
                .calls
                .consumer_info(format!("q-{queue}"))
                .await
                .map_err(nats_err)?;
            out.push(QueueStats {
                queue,
                depth: info.num_pending,
                inflight: info.num_ack_pending as u64,
                dead: 0,
            });
        }
        Ok(out)
    }
}
