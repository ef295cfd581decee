//! A broker message (or a schedule tick) and how it becomes a queued call: body = payload,
//! headers `X-Topic`, `X-Connector`, `X-Message-Id`, `X-Reply-To` and CloudEvents' `ce-*`;
//! queued with back-pressure (a full queue is waited on, the message stays unacked).

use std::time::Duration;

use bytes::Bytes;
use virga_queue::{Call, QueueError};

use crate::Core;

/// The topic (subject) a message arrived on.
pub const X_TOPIC: &str = "x-topic";
/// The connector that made the call: `cron`, `nats` or `mqtt`.
pub const X_CONNECTOR: &str = "x-connector";
/// The broker's id of the message (JetStream sequence, MQTT packet id, `Nats-Msg-Id`).
pub const X_MESSAGE_ID: &str = "x-message-id";
/// Where the answer is published (a NATS reply subject).
pub const X_REPLY_TO: &str = "x-reply-to";

/// A message as a connector received it.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The topic it arrived on.
    pub topic: String,
    /// The broker's id for it, if it has one.
    pub id: Option<String>,
    /// The payload.
    pub body: Bytes,
    /// The reply subject, if the sender waits for an answer.
    pub reply: Option<String>,
    /// Headers the broker carried (NATS headers, MQTT 5 user properties).
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The queue is shutting down: the message stays with the broker.
#[derive(Debug, thiserror::Error)]
#[error("the queue refused the message: {0}")]
pub struct Refused(pub QueueError);

/// The value of `name` among `call`'s headers.
pub(crate) fn header<'a>(call: &'a Call, name: &str) -> Option<&'a str> {
    call.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// The call `msg` makes of `function` through `connector`, with the id `id`.
pub(crate) fn call_of(connector: &'static str, function: &str, msg: &Message, id: String) -> Call {
    let mut headers: Vec<(String, Vec<u8>)> = Vec::with_capacity(msg.headers.len() + 9);
    let mut put = |k: &str, v: &str| headers.push((k.to_string(), v.as_bytes().to_vec()));
    put(X_TOPIC, &msg.topic);
    put(X_CONNECTOR, connector);
    if let Some(m) = &msg.id {
        put(X_MESSAGE_ID, m);
    }
    if let Some(r) = &msg.reply {
        put(X_REPLY_TO, r);
    }
    put("ce-specversion", "1.0");
    put("ce-id", msg.id.as_deref().unwrap_or(&id));
    put("ce-source", &format!("virga/{connector}"));
    put("ce-type", &format!("virga.{connector}.message"));
    put("ce-subject", &msg.topic);
    for (k, v) in &msg.headers {
        let k = k.to_ascii_lowercase();
        if !k.starts_with("x-topic") && k != X_CONNECTOR && k != X_REPLY_TO {
            headers.push((k, v.clone()));
        }
    }
    Call {
        id,
        function: function.to_string(),
        queue: String::new(),
        method: "POST".into(),
        path: String::new(),
        headers,
        body: msg.body.clone(),
        callback: None,
        accepted_ms: virga_queue::unix_ms(),
        attempts: 0,
    }
}

impl Core {
    /// Queue `msg`, which came through the subscription `topic` (the filter, or
    /// `cron-function`), for `function`; returns once it is durable (or dead-lettered for
    /// being too large), waiting while the queue is full. `dedup` drops a repeat on a shared
    /// queue. A function no longer subscribed to `topic` (the table changes before a deploy's
    /// answer; subscriptions follow a moment later) gets nothing.
    pub(crate) async fn deliver(
        &self,
        connector: &'static str,
        function: &str,
        topic: &str,
        msg: &Message,
        dedup: Option<String>,
    ) -> Result<(), Refused> {
        let wanted = self.table.spec(function).is_some_and(|s| {
            if topic == crate::spec::CRON_TOPIC {
                s.schedule.is_some()
            } else {
                s.topics.iter().any(|t| t == topic)
            }
        });
        if !wanted {
            return Ok(());
        }
        self.metrics.connector_received(connector, function);
        let id = dedup
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let mut call = call_of(connector, function, msg, id);
        let max = self.sink.max_body_bytes();
        if call.body.len() > max {
            let reason = format!(
                "the {connector} message on {:?} has {} bytes, over the body limit of {max} \
                 (virga up --max-async-body-bytes)",
                msg.topic,
                call.body.len()
            );
            call.body = Bytes::new();
            self.metrics.connector_failed(connector, function);
            tracing::warn!(%function, "{reason}: dead-lettered");
            return self
                .sink
                .dead_letter(call, 413, reason)
                .await
                .map_err(Refused);
        }
        // Short waits: the queue drains at the functions' pace, and a long sleep would leave
        // it idle after it did.
        let mut wait = Duration::from_millis(5);
        loop {
            match self.sink.enqueue(call.clone(), dedup.clone()).await {
                Ok(()) => {
                    self.table.ran(function, connector, call.accepted_ms as i64);
                    return Ok(());
                }
                Err(QueueError::Closed) => return Err(Refused(QueueError::Closed)),
                // The function is gone: nothing to call.
                Err(QueueError::Config(why)) => {
                    tracing::debug!(%function, "{connector}: message dropped: {why}");
                    return Ok(());
                }
                Err(QueueError::TooLarge(why)) => {
                    call.body = Bytes::new();
                    self.metrics.connector_failed(connector, function);
                    return self.sink.dead_letter(call, 413, why).await.map_err(Refused);
                }
                // A full queue (or one that cannot write now) holds the message back: the
                // broker keeps the rest.
                Err(e) => {
                    tracing::debug!(%function, "{connector}: queue busy ({e}); waiting {wait:?}");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(100));
                }
            }
        }
    }
}
