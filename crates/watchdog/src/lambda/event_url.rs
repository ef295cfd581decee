//! Function-URL calls: any plain HTTP request becomes Lambda's function-URL event (payload
//! format 2.0), and the result becomes the HTTP answer the way a function URL maps it (an
//! object with `statusCode`, or any other JSON as a 200 `application/json` body).

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, COOKIE, SET_COOKIE};
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use super::errors::{application_json, error_json, json_response};
use super::invoke::Invoked;
use super::raw::{read_event_body, request_id};
use super::stream::HTTP_INTEGRATION;
use super::{Event, Outcome, Shared};
use crate::body::{full, with_guard, ResponseBody};

/// Answers one function-URL request.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ResponseBody> {
    let (parts, body) = match read_event_body(req).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let id = request_id(&parts.headers);
    let event = url_event(&parts, &body, &id, peer);
    let invoked = shared
        .invoke(Event {
            id,
            body: Bytes::from(event.to_string()),
            client_context: None,
            tail: false,
        })
        .await;
    answer(invoked).await
}

/// Headers as the event has them: lower-case names, repeated values comma-joined, cookies
/// left out (they are the event's `cookies`).
fn event_headers(h: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in h {
        if name == COOKIE {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes());
        match out.get_mut(name.as_str()) {
            Some(Value::String(s)) => {
                s.push(',');
                s.push_str(&value);
            }
            _ => {
                out.insert(name.as_str().to_owned(), Value::String(value.into_owned()));
            }
        }
    }
    out
}

/// Decoded query parameters, repeated names comma-joined.
fn query_parameters(query: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match out.get_mut(k.as_ref()) {
            Some(Value::String(s)) => {
                s.push(',');
                s.push_str(&v);
            }
            _ => {
                out.insert(k.into_owned(), Value::String(v.into_owned()));
            }
        }
    }
    out
}

/// The function-URL event (payload format 2.0) of a request.
fn url_event(parts: &Parts, body: &Bytes, id: &str, peer: SocketAddr) -> Value {
    let h = &parts.headers;
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let cookies: Vec<&str> = h
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let domain = header("x-forwarded-host")
        .or_else(|| header("host"))
        .unwrap_or("localhost");
    let prefix = domain.split(['.', ':']).next().unwrap_or(domain);
    let source_ip = header("x-forwarded-for")
        .and_then(|v| v.split(',').next())
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| peer.ip().to_string());
    let now = chrono::Utc::now();
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": event_headers(h),
        "requestContext": {
            "accountId": "anonymous",
            "apiId": prefix,
            "domainName": domain,
            "domainPrefix": prefix,
            "http": {
                "method": parts.method.as_str(),
                "path": path,
                "protocol": format!("{:?}", parts.version),
                "sourceIp": source_ip,
                "userAgent": header("user-agent").unwrap_or(""),
            },
            "requestId": id,
            "routeKey": "$default",
            "stage": "$default",
            "time": now.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
            "timeEpoch": now.timestamp_millis(),
        },
        "isBase64Encoded": false,
    });
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query_parameters(query));
    }
    if !body.is_empty() {
        match std::str::from_utf8(body) {
            Ok(text) => event["body"] = json!(text),
            Err(_) => {
                event["body"] = json!(base64::engine::general_purpose::STANDARD.encode(body));
                event["isBase64Encoded"] = json!(true);
            }
        }
    }
    event
}

/// The HTTP answer to an outcome: a failure is a 502 with the error JSON.
async fn answer(invoked: Invoked) -> Response<ResponseBody> {
    let Invoked {
        outcome, permit, ..
    } = invoked;
    match outcome {
        Outcome::Response { body, .. } => result_response(body),
        Outcome::Error(body) => json_response(StatusCode::BAD_GATEWAY, body),
        Outcome::Stream {
            content_type,
            mut body,
        } => {
            let integration = content_type
                .as_ref()
                .is_some_and(|c| c.as_bytes().starts_with(HTTP_INTEGRATION.as_bytes()));
            let meta = match integration {
                true => body.prelude().await,
                false => None,
            };
            let mut resp = Response::new(with_guard(body.boxed_unsync(), permit));
            let prelude = meta.and_then(|m| serde_json::from_slice::<Map<String, Value>>(&m).ok());
            match prelude {
                Some(p) => {
                    if let Err(e) = apply_meta(&mut resp, &p) {
                        return bad_result(&e);
                    }
                }
                None => {
                    let ct = content_type.filter(|_| !integration);
                    resp.headers_mut()
                        .insert(CONTENT_TYPE, ct.unwrap_or_else(application_json));
                }
            }
            resp
        }
    }
}

/// A buffered result mapped as a function URL does.
fn result_response(body: Bytes) -> Response<ResponseBody> {
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(m)) if m.contains_key("statusCode") => structured(&m),
        Ok(Value::String(s)) => json_response(StatusCode::OK, Bytes::from(s)),
        _ => json_response(StatusCode::OK, body),
    }
}

/// `{statusCode, headers, cookies, body, isBase64Encoded}` as the answer.
fn structured(m: &Map<String, Value>) -> Response<ResponseBody> {
    let body = match m.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(s)) if m.get("isBase64Encoded") == Some(&Value::Bool(true)) => {
            match base64::engine::general_purpose::STANDARD.decode(s) {
                Ok(b) => Bytes::from(b),
                Err(e) => return bad_result(&format!("body is not valid base64: {e}")),
            }
        }
        Some(Value::String(s)) => Bytes::from(s.clone()),
        Some(other) => Bytes::from(other.to_string()),
    };
    let mut resp = Response::new(full(body));
    match apply_meta(&mut resp, m) {
        Ok(()) => resp,
        Err(e) => bad_result(&e),
    }
}

/// Sets the status, `headers` and `cookies` of a result (or a stream's prelude).
fn apply_meta(resp: &mut Response<ResponseBody>, m: &Map<String, Value>) -> Result<(), String> {
    let code = m.get("statusCode").and_then(Value::as_u64).unwrap_or(200);
    *resp.status_mut() = u16::try_from(code)
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| format!("statusCode {code} is not an HTTP status"))?;
    let h = resp.headers_mut();
    if let Some(Value::Object(headers)) = m.get("headers") {
        for (k, v) in headers {
            let value = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| format!("header name {k:?} is not valid"))?;
            let value = HeaderValue::from_str(&value)
                .map_err(|_| format!("header {k:?} has an invalid value"))?;
            h.append(name, value);
        }
    }
    if let Some(Value::Array(cookies)) = m.get("cookies") {
        for c in cookies.iter().filter_map(Value::as_str) {
            let value =
                HeaderValue::from_str(c).map_err(|_| format!("cookie {c:?} is not valid"))?;
            h.append(SET_COOKIE, value);
        }
    }
    h.entry(CONTENT_TYPE).or_insert_with(application_json);
    Ok(())
}

/// A 502 for a result that cannot be an HTTP answer.
fn bad_result(why: &str) -> Response<ResponseBody> {
    tracing::warn!(
        error = why,
        "Lambda result is not a valid function-URL answer"
    );
    json_response(
        StatusCode::BAD_GATEWAY,
        error_json("Runtime.InvalidResponse", why),
    )
}
