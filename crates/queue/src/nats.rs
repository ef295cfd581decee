//! The NATS JetStream backend, so several gateways can share one queue. Calls are published to
//! the work-queue stream `VIRGA_CALLS` on subject `virga.calls.QUEUE.FUNCTION` (the publish
//! returns once the server has stored it); each named queue has a durable pull consumer
//! `calls-QUEUE` that every gateway's workers pull from. A retry is a NAK with the backoff as
//! delay, so the attempt number is the stored attempts plus the server's delivery count.
//!
//! A call with a callback is replaced by its result: the result is published to the work-queue
//! stream `VIRGA_RESULTS` (`virga.results.FUNCTION`, consumer `callbacks`) and only then is the
//! call acked; a failed callback is NAKed with its backoff, like a call. Both streams refuse new
//! messages beyond the [`Limits`] (`discard: new`; per function through the per-subject limit),
//! which answers 429; a result that finds `VIRGA_RESULTS` full leaves its call to be delivered
//! again later. Dead letters are messages in `VIRGA_DEAD` (`virga.dead.QUEUE`), the oldest
//! dropped beyond the limit, listed, retried and purged by sequence.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind, Context};
use futures_util::StreamExt;
use tokio::sync::Mutex;

use crate::codec::{
    decode_call, decode_dead, decode_result, encode_call, encode_dead, encode_result,
};
use crate::{
    Call, CallResult, DeadLetter, DeadLetterInfo, Delivery, Failed, Limits, QueueError, QueueStats,
    ResultDelivery, Token,
};

const CALLS: &str = "VIRGA_CALLS";
const RESULTS: &str = "VIRGA_RESULTS";
const DEAD: &str = "VIRGA_DEAD";
/// The consumer of `VIRGA_RESULTS`.
const CALLBACKS: &str = "callbacks";
/// Room kept in a message for the dead-letter envelope around a call or a result.
const ENVELOPE: usize = 1024;
/// How long a call waits when its result finds `VIRGA_RESULTS` full.
const RESULTS_FULL_WAIT: Duration = Duration::from_secs(5);

fn nats_err(e: impl std::fmt::Display) -> QueueError {
    QueueError::Nats(e.to_string())
}

/// A publish error: [`QueueError::Full`] when the stream refused it for a limit.
fn publish_err(e: jetstream::context::PublishError) -> QueueError {
    let api = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<jetstream::Error>());
    match api {
        Some(a) if a.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED => {
            let text = a.to_string();
            let what = if text.contains("per subject") {
                "this function has as many async calls waiting as the limit per function allows"
            } else if text.contains("bytes") {
                "the queue holds as many bytes of async calls as its limit allows"
            } else {
                "the queue holds as many async calls as its limit allows"
            };
            QueueError::Full(format!("{what} (NATS: {text})"))
        }
        _ => nats_err(e),
    }
}

fn limit(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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
    /// What the streams hold at most.
    pub limits: Limits,
}

impl NatsConfig {
    /// Defaults for `url`.
    pub fn new(url: &str) -> Self {
        NatsConfig {
            url: url.to_string(),
            ack_wait: Duration::from_secs(10),
            limits: Limits::default(),
        }
    }
}

type Messages = Arc<Mutex<consumer::pull::Stream>>;

/// The JetStream queue.
pub struct Nats {
    js: Context,
    cfg: NatsConfig,
    calls: stream::Stream,
    results: stream::Stream,
    dead: stream::Stream,
    consumers: Mutex<HashMap<String, Messages>>,
    callbacks: Mutex<Option<Messages>>,
    dead_lock: Mutex<()>,
    max_payload: usize,
}

/// Create `cfg`'s stream, or bring an existing one to `cfg` (subjects, limits).
async fn ensure_stream(js: &Context, cfg: stream::Config) -> Result<stream::Stream, QueueError> {
    let name = cfg.name.clone();
    js.get_or_create_stream(cfg.clone()).await.map_err(|e| {
        QueueError::Nats(format!(
            "create stream {name} (is JetStream on, nats-server -js?): {e}"
        ))
    })?;
    js.update_stream(&cfg)
        .await
        .map_err(|e| QueueError::Nats(format!("update stream {name}: {e}")))?;
    js.get_stream(&name).await.map_err(nats_err)
}

fn work_queue(name: &str, subject: &str, l: &Limits) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        max_messages: limit(l.max_depth),
        max_bytes: limit(l.max_bytes),
        max_messages_per_subject: limit(l.max_depth_per_function),
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        ..Default::default()
    }
}

impl Nats {
    /// Connect to the server and create (or update) the streams.
    pub async fn connect(cfg: NatsConfig) -> Result<Nats, QueueError> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(cfg.url.as_str())
            .await
            .map_err(|e| QueueError::Nats(format!("cannot connect to {}: {e}", cfg.url)))?;
        let max_payload = client.server_info().max_payload;
        let js = jetstream::new(client);
        let l = &cfg.limits;
        let calls = ensure_stream(&js, work_queue(CALLS, "virga.calls.>", l)).await?;
        let results = ensure_stream(&js, work_queue(RESULTS, "virga.results.>", l)).await?;
        let dead = ensure_stream(
            &js,
            stream::Config {
                name: DEAD.into(),
                subjects: vec!["virga.dead.>".into()],
                storage: stream::StorageType::File,
                max_messages: limit(l.max_dead_letters),
                max_bytes: limit(l.max_bytes),
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            },
        )
        .await?;
        let nats = Nats {
            js,
            cfg,
            calls,
            results,
            dead,
            consumers: Mutex::new(HashMap::new()),
            callbacks: Mutex::new(None),
            dead_lock: Mutex::new(()),
            max_payload,
        };
        nats.migrate_first_layout().await?;
        Ok(nats)
    }

    /// Move calls left by the first subject layout (`virga.calls.QUEUE`, consumers `q-QUEUE`)
    /// to the current one, then drop those consumers.
    async fn migrate_first_layout(&self) -> Result<(), QueueError> {
        let mut names = self.calls.consumer_names();
        let mut old = Vec::new();
        while let Some(Ok(n)) = names.next().await {
            if n.starts_with("q-") {
                old.push(n);
            }
        }
        for name in old {
            let consumer: consumer::PullConsumer =
                self.calls.get_consumer(&name).await.map_err(nats_err)?;
            loop {
                let mut batch = consumer
                    .fetch()
                    .max_messages(64)
                    .expires(Duration::from_millis(300))
                    .messages()
                    .await
                    .map_err(nats_err)?;
                let mut moved = 0;
                while let Some(Ok(m)) = batch.next().await {
                    if let Ok(call) = decode_call(&m.message.payload) {
                        self.publish(call_subject(&call), m.message.payload.to_vec())
                            .await?;
                        moved += 1;
                    }
                    m.double_ack().await.map_err(nats_err)?;
                }
                if moved == 0 {
                    break;
                }
                tracing::info!(consumer = %name, moved, "queue: moved calls to the current NATS layout");
            }
            self.calls.delete_consumer(&name).await.map_err(nats_err)?;
        }
        Ok(())
    }

    async fn publish(&self, subject: String, payload: Vec<u8>) -> Result<(), QueueError> {
        self.js
            .publish(subject, payload.into())
            .await
            .map_err(publish_err)?
            .await
            .map_err(publish_err)?;
        Ok(())
    }

    /// The largest call or result stored: the server's `max_payload` less the envelope.
    pub(crate) fn max_message_bytes(&self) -> usize {
        self.max_payload.saturating_sub(ENVELOPE)
    }

    pub(crate) async fn enqueue(&self, call: Call) -> Result<(), QueueError> {
        self.enqueue_keyed(call, None).await
    }

    /// Store `call`; with `key`, JetStream drops a second call with that key (its
    /// `Nats-Msg-Id`) within the stream's duplicate window.
    pub(crate) async fn enqueue_keyed(
        &self,
        call: Call,
        key: Option<&str>,
    ) -> Result<(), QueueError> {
        let payload = encode_call(&call);
        let max = self.max_message_bytes();
        if payload.len() > max {
            return Err(QueueError::TooLarge(format!(
                "the call takes {} bytes with its headers; the NATS server stores at most {max} \
                 (its max_payload less {ENVELOPE} bytes): send a smaller body",
                payload.len()
            )));
        }
        let Some(key) = key else {
            return self.publish(call_subject(&call), payload).await;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", key);
        self.js
            .publish_with_headers(call_subject(&call), headers, payload.into())
            .await
            .map_err(publish_err)?
            .await
            .map_err(publish_err)?;
        Ok(())
    }

    /// Store `d` among the dead letters.
    pub(crate) async fn store_dead(&self, d: &DeadLetter) -> Result<(), QueueError> {
        self.publish_dead(d).await
    }

    async fn pull(
        &self,
        stream: &stream::Stream,
        name: &str,
        filter: String,
    ) -> Result<Messages, QueueError> {
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                name,
                consumer::pull::Config {
                    durable_name: Some(name.to_string()),
                    filter_subject: filter,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.cfg.ack_wait,
                    max_deliver: -1,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(nats_err)?;
        // Bounded by bytes too: buffered messages are bodies in memory.
        let batch_bytes = (8 << 20).max(2 * self.max_payload);
        let messages = consumer
            .stream()
            .max_messages_per_batch(64)
            .max_bytes_per_batch(batch_bytes)
            .messages()
            .await
            .map_err(nats_err)?;
        Ok(Arc::new(Mutex::new(messages)))
    }

    async fn messages(&self, queue: &str) -> Result<Messages, QueueError> {
        let mut map = self.consumers.lock().await;
        if let Some(m) = map.get(queue) {
            return Ok(m.clone());
        }
        let filter = format!("virga.calls.{queue}.*");
        let m = self
            .pull(&self.calls, &format!("calls-{queue}"), filter)
            .await?;
        map.insert(queue.to_string(), m.clone());
        Ok(m)
    }

    /// The next message of `messages` that `decode` reads, with its delivery count.
    async fn next<T>(
        messages: &Messages,
        decode: impl Fn(&bytes::Bytes) -> Result<T, QueueError>,
    ) -> Result<(T, u32, jetstream::Message), QueueError> {
        let mut messages = messages.lock().await;
        loop {
            let m = match messages.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(nats_err(e)),
                None => return Err(QueueError::Closed),
            };
            let delivered = m.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
            match decode(&m.message.payload) {
                Ok(item) => return Ok((item, delivered, m)),
                Err(e) => {
                    tracing::error!(subject = %m.subject, "queue: dropping an unreadable NATS message: {e}");
                    let _ = m.ack_with(AckKind::Term).await;
                }
            }
        }
    }

    pub(crate) async fn receive(&self, queue: &str) -> Result<Delivery, QueueError> {
        let messages = self.messages(queue).await?;
        let (call, delivered, m) = Self::next(&messages, decode_call).await?;
        Ok(Delivery {
            attempt: call.attempts + delivered,
            call,
            token: Token::Nats(Box::new(m)),
        })
    }

    pub(crate) async fn receive_result(&self) -> Result<ResultDelivery, QueueError> {
        let messages = {
            let mut slot = self.callbacks.lock().await;
            match &*slot {
                Some(m) => m.clone(),
                None => {
                    let filter = "virga.results.*".to_string();
                    let m = self.pull(&self.results, CALLBACKS, filter).await?;
                    *slot = Some(m.clone());
                    m
                }
            }
        };
        let (result, delivered, m) = Self::next(&messages, decode_result).await?;
        Ok(ResultDelivery {
            attempt: result.attempts + delivered,
            result,
            token: Token::Nats(Box::new(m)),
        })
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

    /// End call `m`: publish its dead letter and its result, then ack it.
    pub(crate) async fn finish(
        &self,
        m: &jetstream::Message,
        dead: Option<DeadLetter>,
        result: Option<CallResult>,
    ) -> Result<(), QueueError> {
        if let Some(d) = dead {
            self.publish_dead(&d).await?;
        }
        if let Some(r) = result {
            match self.publish_result(r).await {
                Ok(()) => {}
                Err(QueueError::Full(why)) => {
                    tracing::warn!(
                        "queue: no room for a result ({why}): its call runs again later"
                    );
                    return self.retry(m, RESULTS_FULL_WAIT).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.ack(m).await
    }

    async fn publish_result(&self, mut r: CallResult) -> Result<(), QueueError> {
        let max = self.max_message_bytes();
        let mut payload = encode_result(&r);
        if payload.len() > max {
            // Cut the body (then the headers) so the result fits a message.
            let over = payload.len() - max;
            r.body.truncate(r.body.len().saturating_sub(over));
            r.truncated = true;
            payload = encode_result(&r);
            if payload.len() > max {
                r.headers.clear();
                payload = encode_result(&r);
            }
        }
        self.publish(format!("virga.results.{}", r.function), payload)
            .await
    }

    async fn publish_dead(&self, d: &DeadLetter) -> Result<(), QueueError> {
        let queue = DeadLetterInfo::from(d).queue;
        self.publish(format!("virga.dead.{queue}"), encode_dead(d))
            .await
    }

    /// Move `m` (a call or a result) to the dead letters.
    pub(crate) async fn dead_letter(
        &self,
        m: &jetstream::Message,
        d: DeadLetter,
    ) -> Result<(), QueueError> {
        self.publish_dead(&d).await?;
        self.ack(m).await
    }

    /// Every dead letter's summary with its stream sequence (one message in memory at a time).
    async fn dead_with_seq(&self) -> Result<Vec<(u64, DeadLetterInfo)>, QueueError> {
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
            match decode_dead(&msg.payload) {
                Ok(d) => out.push((seq, DeadLetterInfo::from(&d))),
                Err(e) => tracing::warn!(seq, "queue: unreadable dead letter: {e}"),
            }
        }
        Ok(out)
    }

    pub(crate) async fn dead_letters(&self) -> Result<Vec<DeadLetterInfo>, QueueError> {
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
        callback_until_ms: u64,
    ) -> Result<bool, QueueError> {
        let _guard = self.dead_lock.lock().await;
        let Some((seq, _)) = self
            .dead_with_seq()
            .await?
            .into_iter()
            .find(|(_, d)| d.id == id)
        else {
            return Ok(false);
        };
        let msg = self.dead.get_raw_message(seq).await.map_err(nats_err)?;
        match decode_dead(&msg.payload)?.failed {
            Failed::Call(mut call) => {
                call.attempts = 0;
                call.accepted_ms = now_ms;
                self.enqueue(call).await?;
            }
            Failed::Callback(mut result) => {
                result.attempts = 0;
                result.give_up_ms = callback_until_ms;
                self.publish_result(result).await?;
            }
        }
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
            if let Some(q) = n.strip_prefix("calls-") {
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
                .consumer_info(format!("calls-{queue}"))
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

    pub(crate) async fn callback_stats(&self) -> Result<QueueStats, QueueError> {
        let (depth, inflight) = match self.results.consumer_info(CALLBACKS).await {
            Ok(info) => (info.num_pending, info.num_ack_pending as u64),
            // No consumer yet: nothing was ever waiting for a callback.
            Err(_) => (0, 0),
        };
        Ok(QueueStats {
            queue: CALLBACKS.into(),
            depth,
            inflight,
            dead: 0,
        })
    }
}

fn call_subject(call: &Call) -> String {
    format!("virga.calls.{}.{}", call.queue, call.function)
}

#[cfg(test)]
#[path = "nats_tests.rs"]
mod tests;
