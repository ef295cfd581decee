//! The queue's operator routes: `GET /system/virga/queues` (depth, in flight, counters) and
//! the dead letters, `GET|DELETE /system/virga/dead-letters` and
//! `POST /system/virga/dead-letters/{id}/retry`, each showing or touching only the
//! namespaces the caller acts in.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Serialize;
use virga_queue::{PoolCounters, QueueError, QueueStats};
use virga_types::split_key;

use crate::asyncfn::async_calls;
use crate::namespaces::{resolve, NamespaceQuery};
use crate::{ApiError, AppState, Need, Principal};

/// `GET /system/virga/dead-letters`.
pub(crate) async fn list_dead(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Query(q): Query<NamespaceQuery>,
) -> Result<Json<Vec<virga_queue::DeadLetterInfo>>, ApiError> {
    who.check_role(Need::Read)?;
    let only = match q.namespace.as_str() {
        "" => None,
        ns => Some(resolve(&state, &who, Need::Read, ns)?),
    };
    let letters = dead_letters(&state).await?;
    Ok(Json(
        letters
            .into_iter()
            .filter(|l| {
                let ns = split_key(&l.function).1;
                who.sees(ns) && only.as_deref().is_none_or(|o| o == ns)
            })
            .collect(),
    ))
}

async fn dead_letters(state: &AppState) -> Result<Vec<virga_queue::DeadLetterInfo>, ApiError> {
    async_calls(state)?
        .queue
        .dead_letters()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `POST /system/virga/dead-letters/{id}/retry`: back on its queue, attempts reset.
pub(crate) async fn retry_dead(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::NotFound(format!("dead letter {id:?} not found"));
    let letter = dead_letters(&state)
        .await?
        .into_iter()
        .find(|l| l.id == id)
        .ok_or_else(not_found)?;
    let ns = split_key(&letter.function).1;
    if !who.sees(ns) {
        return Err(not_found());
    }
    who.check(Need::Deploy, ns)?;
    let calls = async_calls(&state)?;
    let now = virga_queue::unix_ms();
    let until = now.saturating_add(calls.pool.config().callback_retry_for.as_millis() as u64);
    let found = calls
        .queue
        .retry_dead_letter(&id, now, until)
        .await
        .map_err(|e| match e {
            QueueError::Full(why) => ApiError::TooManyRequests(why),
            e => ApiError::Internal(e.to_string()),
        })?;
    if !found {
        return Err(not_found());
    }
    for s in calls.queue.known_queues().await {
        calls.pool.ensure_queue(&s);
    }
    Ok(StatusCode::ACCEPTED)
}

/// What `DELETE /system/virga/dead-letters` answers.
#[derive(Serialize)]
pub(crate) struct Purged {
    purged: usize,
}

/// `DELETE /system/virga/dead-letters`: drop them all.
pub(crate) async fn purge_dead(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Result<Json<Purged>, ApiError> {
    // Letters of every namespace go at once.
    who.check_role(Need::Admin)?;
    let purged = async_calls(&state)?
        .queue
        .purge_dead_letters()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(Purged { purged }))
}

/// What `GET /system/virga/queues` answers.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct QueuesReport {
    backend: &'static str,
    queues: Vec<QueueStats>,
    /// Results waiting for their callback (`depth`) and being sent (`inflight`).
    callbacks: QueueStats,
    #[serde(flatten)]
    counters: PoolCounters,
}

/// `GET /system/virga/queues`: depth, in-flight and dead letters per queue.
pub(crate) async fn queues(
    State(state): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
) -> Result<Json<QueuesReport>, ApiError> {
    who.check_role(Need::Read)?;
    let calls = async_calls(&state)?;
    let internal = |e: QueueError| ApiError::Internal(e.to_string());
    let queues = calls.queue.stats().await.map_err(internal)?;
    let callbacks = calls.queue.callback_stats().await.map_err(internal)?;
    Ok(Json(QueuesReport {
        backend: calls.queue.backend(),
        queues,
        callbacks,
        counters: calls.pool.counters(),
    }))
}
