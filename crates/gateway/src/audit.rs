//! The audit log of `/system/*` changes: [`record`] (after auth) stores who asked, the
//! method and path, what they named and the answer's status for every POST, PUT, PATCH and
//! DELETE, once the answer is known. Never a body: from a small JSON body only the names
//! (`service`, `functionName`, `serviceName`, `name`, `namespace`) are read, so a secret's
//! value is never kept. `GET /system/virga/audit?limit=N` reads it, newest first (admin).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, Query, RawPathParams, Request, State};
use axum::http::{request::Parts, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use serde::Deserialize;
use virga_store::AUDIT_KEPT;
use virga_types::AuditEntry;

use crate::{ApiError, AppState, Need, Principal};

/// Largest body read for the names it holds.
const BODY_PEEK: usize = 1 << 20;
/// Longest action or target kept (a path or a name may be anything the client sent).
const FIELD_MAX: usize = 256;
/// Entries answered when no `limit` is given.
const DEFAULT_LIMIT: usize = 100;

/// The names a change's JSON body may give; everything else is skipped unread.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Named {
    service: Option<String>,
    function_name: Option<String>,
    service_name: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
}

fn clip(mut s: String) -> String {
    if s.len() > FIELD_MAX {
        let mut end = FIELD_MAX;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Whether a request to `path` with `method` changes something (calls through the
/// console's invoke route are function calls, not changes).
fn is_change(method: &Method, path: &str) -> bool {
    let writes = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE];
    writes.contains(method) && !path.starts_with("/system/virga/invoke/")
}

/// Middleware: record every change with the caller [`crate::auth::require`] found.
pub(crate) async fn record(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if !is_change(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let who = req
        .extensions()
        .get::<Principal>()
        .map_or_else(|| "unknown".to_string(), |p| p.name.clone());
    let action = clip(format!("{} {}", req.method(), req.uri().path()));
    let (req, target) = match target_of(req).await {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    let resp = next.run(req).await;
    let entry = AuditEntry {
        seq: 0,
        time: Utc::now(),
        who,
        action,
        target,
        status: resp.status().as_u16(),
    };
    if let Err(e) = state.store.append_audit(&entry) {
        tracing::warn!(action = %entry.action, who = %entry.who, "audit entry not recorded: {e}");
    }
    resp
}

/// The request again (its body read back in, if it was read) and what it names: the
/// route's path parameter or the body's name, under the namespace of the query or body.
async fn target_of(req: Request) -> Result<(Request, Option<String>), ApiError> {
    let (mut parts, body) = req.into_parts();
    let in_path = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok()
        .and_then(|p| p.iter().next().map(|(_, v)| v.to_string()));
    let in_query = parts.uri.query().and_then(url_namespace);
    let (body, named) = if in_path.is_none() && small(&parts) {
        let bytes = axum::body::to_bytes(body, BODY_PEEK)
            .await
            .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
        let named = serde_json::from_slice::<Named>(&bytes).unwrap_or_default();
        (Body::from(bytes), named)
    } else {
        (body, Named::default())
    };
    let name = in_path
        .or(named.service)
        .or(named.function_name)
        .or(named.service_name)
        .or(named.name)
        .filter(|n| !n.is_empty());
    let ns = in_query.or(named.namespace).filter(|n| !n.is_empty());
    let target = match (ns, name) {
        (Some(ns), Some(name)) => Some(format!("{ns}/{name}")),
        (ns, name) => ns.or(name),
    };
    Ok((Request::from_parts(parts, body), target.map(clip)))
}

/// Whether the body's declared length is at most [`BODY_PEEK`].
fn small(parts: &Parts) -> bool {
    parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n <= BODY_PEEK)
}

/// The `namespace` query parameter, if any.
fn url_namespace(query: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Q {
        namespace: Option<String>,
    }
    Query::<Q>::try_from_uri(&format!("/?{query}").parse().ok()?)
        .ok()
        .and_then(|q| q.0.namespace)
}

/// `?limit=N` of the audit route.
#[derive(Deserialize)]
pub(crate) struct AuditQuery {
    limit: Option<String>,
}

/// `GET /system/virga/audit?limit=N`: the newest N entries (100 unless told), newest first.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Extension(p): Extension<Principal>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    p.check_role(Need::Admin)?;
    let limit = match q.limit {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=AUDIT_KEPT as usize).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "limit: {text:?} is not a number from 1 to {AUDIT_KEPT}"
                ))
            })?,
    };
    Ok(Json(state.store.audit(limit)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_writes_other_than_function_calls() {
        assert!(is_change(&Method::POST, "/system/secrets"));
        assert!(is_change(&Method::DELETE, "/system/virga/tokens/x"));
        assert!(!is_change(&Method::GET, "/system/secrets"));
        assert!(!is_change(&Method::POST, "/system/virga/invoke/f"));
    }

    #[test]
    fn long_fields_are_clipped_on_a_character() {
        assert_eq!(clip("abc".into()), "abc");
        let long = "é".repeat(FIELD_MAX);
        let c = clip(long);
        assert!(c.len() <= FIELD_MAX + '…'.len_utf8(), "{}", c.len());
        assert!(c.ends_with('…'));
        assert_eq!(
            url_namespace("a=1&namespace=team-a").as_deref(),
            Some("team-a")
        );
        assert_eq!(url_namespace("a=1"), None);
    }
}
