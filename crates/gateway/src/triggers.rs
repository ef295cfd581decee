//! Event triggers in the gateway: the connectors' [`Sink`] is the async queue (a message is a
//! call on its function's queue, durable before the broker is acked); a deploy's trigger
//! annotations are checked (400 naming the annotation) and the subscription table follows
//! every deploy, update and remove at once; `GET /system/virga/triggers` lists them.

use std::sync::{Arc, Weak};

use axum::extract::State;
use axum::Json;
use futures_util::future::BoxFuture;
use virga_connectors::{Sink, Spec, TriggerError, TriggerInfo, Triggers, TriggersConfig};
use virga_queue::{Call, QueueError};
use virga_types::FunctionDeployment;

use crate::{ApiError, AppState};

/// Queues connectors' calls through the gateway's async queue.
struct QueueSink {
    state: Weak<AppState>,
}

impl QueueSink {
    /// The queue, with `call` set on its function's queue (an error if the function is gone).
    fn prepare(&self, call: &mut Call) -> Result<Arc<AppState>, QueueError> {
        let state = self.state.upgrade().ok_or(QueueError::Closed)?;
        let handle = state.function_handle(&call.function).ok_or_else(|| {
            QueueError::Config(format!("function {:?} is not deployed", call.function))
        })?;
        call.queue = handle.calls().policy.queue.clone();
        Ok(state)
    }
}

impl Sink for QueueSink {
    fn enqueue(
        &self,
        mut call: Call,
        dedup: Option<String>,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            let state = self.prepare(&mut call)?;
            let calls = state.async_calls.get().ok_or(QueueError::Closed)?;
            let queue = call.queue.clone();
            match dedup {
                Some(key) => calls.queue.enqueue_once(call, &key).await?,
                None => calls.queue.enqueue(call).await?,
            }
            calls.pool.ensure_queue(&queue);
            Ok(())
        })
    }

    fn dead_letter(
        &self,
        mut call: Call,
        status: u16,
        reason: String,
    ) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            let state = self.prepare(&mut call)?;
            let calls = state.async_calls.get().ok_or(QueueError::Closed)?;
            let function = call.function.clone();
            calls.queue.dead_letter_call(call, status, reason).await?;
            state.metrics.dead_letter(&function);
            Ok(())
        })
    }

    fn max_body_bytes(&self) -> usize {
        self.state
            .upgrade()
            .and_then(|s| s.async_calls.get().map(|c| c.max_body_bytes))
            .unwrap_or(0)
    }
}

/// Start the connectors `cfg` turns on, with every stored function's triggers; returns the
/// names of those that are on.
pub async fn enable_triggers(
    state: &Arc<AppState>,
    cfg: TriggersConfig,
) -> Result<Vec<&'static str>, TriggerError> {
    let sink = Arc::new(QueueSink {
        state: Arc::downgrade(state),
    });
    let table = virga_connectors::Table::default();
    if let Ok(functions) = state.store.functions() {
        for f in functions {
            let d = &f.deployment;
            match Spec::from_annotations(d.annotations.as_ref()) {
                Ok(spec) => table.set(&f.key(), spec),
                Err(e) => tracing::warn!(function = %f.key(), "triggers ignored: {e}"),
            }
        }
    }
    let triggers = Triggers::start(cfg, table, sink, state.metrics.clone()).await?;
    let on = triggers.enabled();
    let _ = state.triggers.set(triggers);
    Ok(on)
}

/// 400 naming the first trigger annotation of `d` that cannot be used.
pub(crate) fn check(d: &FunctionDeployment) -> Result<(), ApiError> {
    Spec::from_annotations(d.annotations.as_ref())
        .map(|_| ())
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// `d` was deployed or updated: its subscriptions follow now.
pub(crate) fn deployed(state: &AppState, d: &FunctionDeployment) {
    if let Some(t) = state.triggers.get() {
        t.table().set(
            &virga_types::function_key(&d.service, &d.namespace),
            Spec::from_annotations(d.annotations.as_ref())
                .ok()
                .flatten(),
        );
    }
}

/// `name` was removed: its triggers stop now.
pub(crate) fn removed(state: &AppState, name: &str) {
    if let Some(t) = state.triggers.get() {
        t.table().set(name, None);
    }
}

/// An attempt at an async call ended: a connector's call is counted, its answer published.
pub(crate) fn answered(state: &AppState, call: &Call, status: u16, body: &bytes::Bytes) {
    if let Some(t) = state.triggers.get() {
        t.answered(call, status, body);
    }
}

/// `GET /system/virga/triggers`: every subscription and schedule, its last and next run.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    axum::Extension(who): axum::Extension<crate::Principal>,
) -> Result<Json<Vec<TriggerInfo>>, ApiError> {
    who.check_role(crate::Need::Read)?;
    let all = state.triggers.get().map(Triggers::list).unwrap_or_default();
    Ok(Json(
        all.into_iter()
            .filter(|t| who.sees(virga_types::split_key(&t.function).1))
            .collect(),
    ))
}
