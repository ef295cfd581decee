//! Raw invokes (`X-Virga-Lambda-Invoke`, the gateway's Invoke API): the body is the event,
//! the answer is the runtime's bytes unchanged, a failure is `X-Amz-Function-Error: Unhandled`
//! with Lambda's error JSON.

use std::sync::Arc;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use virga_types::headers;

use super::errors::{application_json, invalid_request, request_too_large, REQUEST_LIMIT};
use super::invoke::Invoked;
use super::{Event, Outcome, Shared};
use crate::body::{full, with_guard, ResponseBody};

const FUNCTION_ERROR: HeaderName = HeaderName::from_static(headers::X_AMZ_FUNCTION_ERROR);
const LOG_RESULT: HeaderName = HeaderName::from_static(headers::X_AMZ_LOG_RESULT);
const REQUEST_ID: HeaderName = HeaderName::from_static(headers::X_AMZN_REQUEST_ID);

/// How much of a too large request body is read (and dropped) so that the client, still
/// sending, gets the 413 instead of a broken connection.
const DRAIN_LIMIT: u64 = 64 << 20;

/// The request's body, at most [`REQUEST_LIMIT`] bytes; else the answer to give.
pub(crate) async fn read_event_body(
    req: Request<Incoming>,
) -> Result<(hyper::http::request::Parts, Bytes), Response<ResponseBody>> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, mut body) = req.into_parts();
    if declared.is_some_and(|n| n > REQUEST_LIMIT as u64) {
        drain(&mut body, 0).await;
        return Err(request_too_large());
    }
    let mut buf = BytesMut::new();
    let mut first: Option<Bytes> = None;
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| invalid_request(&format!("failed to read the request body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + first.as_ref().map_or(0, Bytes::len) + data.len() > REQUEST_LIMIT {
            let read = (buf.len() + data.len()) as u64;
            drain(&mut body, read).await;
            return Err(request_too_large());
        }
        // One chunk (the usual case) is kept as it is, without a copy.
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
    }
    Ok((parts, first.unwrap_or_else(|| buf.freeze())))
}

/// Reads and drops the rest of `body`, up to [`DRAIN_LIMIT`] bytes in all.
async fn drain(body: &mut Incoming, mut read: u64) {
    while read < DRAIN_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => return,
        }
    }
}

/// The call's request id: its `X-Call-Id`, else a new one.
pub(crate) fn request_id(h: &HeaderMap) -> String {
    h.get(headers::X_CALL_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Answers one raw invoke.
pub(crate) async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, body) = match read_event_body(req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let client_context = match parts.headers.get(headers::X_AMZ_CLIENT_CONTEXT) {
        None => None,
        Some(v) => match base64::engine::general_purpose::STANDARD
            .decode(v.as_bytes())
            .ok()
            .and_then(|json| HeaderValue::from_bytes(&json).ok())
        {
            Some(cc) => Some(cc),
            None => {
                return invalid_request(
                    "X-Amz-Client-Context must be base64 of a JSON object (on one line)",
                )
            }
        },
    };
    let tail = parts
        .headers
        .get(headers::X_AMZ_LOG_TYPE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"tail"));
    let id = request_id(&parts.headers);
    let invoked = shared
        .invoke(Event {
            id: id.clone(),
            body,
            client_context,
            tail,
        })
        .await;
    answer(invoked, &id)
}

/// The Invoke API's answer to an outcome.
fn answer(invoked: Invoked, id: &str) -> Response<ResponseBody> {
    let Invoked {
        outcome,
        permit,
        log,
    } = invoked;
    let (body, content_type, failed) = match outcome {
        Outcome::Response { content_type, body } => (full(body), content_type, false),
        Outcome::Stream { content_type, body } => (
            // The runtime stays busy (holds the slot) until the stream ends.
            with_guard(body.boxed_unsync(), permit),
            content_type,
            false,
        ),
        Outcome::Error(body) => (full(body), None, true),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, content_type.unwrap_or_else(application_json));
    if failed {
        h.insert(FUNCTION_ERROR, HeaderValue::from_static("Unhandled"));
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(REQUEST_ID, v);
    }
    if let Some(v) = log.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(LOG_RESULT, v);
    }
    resp
}
