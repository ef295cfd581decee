//! `GET /system/logs?name=&namespace=&instance=&tail=&since=&follow=`: a function's log lines
//! as newline-delimited JSON objects (`name`, `namespace`, `instance`, `timestamp`, `text`), the
//! OpenFaaS shape. `follow=true` sends the matching history, then streams new lines until the
//! client leaves; the stream owns the hub subscription, so a closed connection drops it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use crate::functions::load;
use crate::{ApiError, AppState, Need, Principal};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use futures_util::stream::{self, StreamExt};
use virga_logs::{LogLine, LogQuery};

/// `Content-Type` of the answer.
const NDJSON: &str = "application/x-ndjson";

/// `GET /system/logs`.
pub(crate) async fn get_logs(
    State(state): State<Arc<AppState>>,
    axum::Extension(who): axum::Extension<Principal>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let param = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let name = param("name")
        .ok_or_else(|| ApiError::BadRequest("name: give the function's name".into()))?;
    let f = load(
        &state,
        &who,
        Need::Read,
        name,
        param("namespace").unwrap_or(""),
    )?;
    let query = LogQuery {
        instance: param("instance").map(str::to_string),
        since: param("since")
            .map(|s| parse_since(s, Utc::now()))
            .transpose()?,
        tail: param("tail").map(parse_tail).transpose()?.flatten(),
    };
    let follow = param("follow")
        .map(parse_bool)
        .transpose()?
        .unwrap_or(false);
    let log = state.logs.function(&f.key());
    let body = if follow {
        let (history, follower) = log.follow(&query);
        let live = stream::unfold(follower, |mut f| async move {
            let line = f.next().await?;
            Some((line, f))
        });
        Body::from_stream(
            stream::iter(history)
                .chain(live)
                .map(|l| Ok::<_, Infallible>(json_line(&l))),
        )
    } else {
        let mut out = Vec::new();
        for l in log.query(&query) {
            out.extend_from_slice(&json_line(&l));
        }
        Body::from(out)
    };
    Ok(([(header::CONTENT_TYPE, NDJSON)], body).into_response())
}

fn json_line(l: &LogLine) -> Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// `tail`: a line count; a negative one (OpenFaaS uses -1) means all lines.
fn parse_tail(s: &str) -> Result<Option<usize>, ApiError> {
    let n: i64 = s
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("tail: {s:?} is not a whole number of lines")))?;
    Ok(usize::try_from(n).ok())
}

fn parse_bool(s: &str) -> Result<bool, ApiError> {
    match s {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(ApiError::BadRequest(format!(
            "follow: {s:?} is not true or false"
        ))),
    }
}

/// `since`: an RFC 3339 timestamp, or a duration back from `now` such as `90s`, `5m`, `1h30m`
/// (the platform's duration syntax).
fn parse_since(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let bad = || {
        ApiError::BadRequest(format!(
            "since: {s:?} is neither an RFC 3339 timestamp (2024-05-01T12:00:00Z) \
             nor a duration such as 30s, 5m or 1h30m"
        ))
    };
    let back = virga_types::duration::parse(s).map_err(|_| bad())?;
    let back = Duration::from_std(back).map_err(|_| bad())?;
    now.checked_sub_signed(back).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_since() {
        let now = DateTime::parse_from_rfc3339("2024-05-01T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| parse_since(s, now).map(|t| t.to_rfc3339());
        assert_eq!(at("5m").unwrap(), "2024-05-01T11:55:00+00:00");
        assert_eq!(at("1h30m").unwrap(), "2024-05-01T10:30:00+00:00");
        assert_eq!(at("1500ms").unwrap(), "2024-05-01T11:59:58.500+00:00");
        assert_eq!(at("90").unwrap(), "2024-05-01T11:58:30+00:00");
        assert_eq!(
            at("2024-04-30T10:00:00+02:00").unwrap(),
            "2024-04-30T08:00:00+00:00"
        );
        for bad in ["", "m", "5x", "-5m", "yesterday", "5m3", "2d"] {
            assert!(at(bad).is_err(), "{bad:?}");
        }
        let msg = at("soon").unwrap_err().to_string();
        assert!(msg.contains("since"), "{msg}");
    }

    #[test]
    fn parses_tail_and_follow() {
        assert_eq!(parse_tail("10").unwrap(), Some(10));
        assert_eq!(parse_tail("-1").unwrap(), None);
        assert!(parse_tail("ten").is_err());
        assert!(parse_bool("true").unwrap());
        assert!(!parse_bool("0").unwrap());
        assert!(parse_bool("yes please").is_err());
    }
}
