//! Lambda's error bodies: what a caller gets for a timeout, a crash, a too large payload, and
//! the Runtime API's own `{"errorMessage","errorType"}` answers.

use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};
use serde_json::json;

use crate::body::{full, ResponseBody};

/// Lambda's limit of an invocation's request payload (6 MiB).
pub const REQUEST_LIMIT: usize = 6_291_456;
/// Lambda's limit of a buffered response payload (as its error message says).
pub const RESPONSE_LIMIT: usize = 6_291_556;

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// `{"errorType": .., "errorMessage": ..}` as bytes.
pub fn error_json(error_type: &str, message: &str) -> Bytes {
    Bytes::from(json!({"errorType": error_type, "errorMessage": message}).to_string())
}

/// The caller's error for a call that ran out of time.
pub fn timed_out(id: &str, limit: Duration) -> Bytes {
    error_json(
        "Sandbox.Timedout",
        &format!(
            "RequestId: {id} Error: Task timed out after {:.2} seconds",
            limit.as_secs_f64()
        ),
    )
}

/// The caller's error for a runtime that exited (`status` like `exit status 3`).
pub fn exited(id: &str, status: &str) -> Bytes {
    error_json(
        "Runtime.ExitError",
        &format!("RequestId: {id} Error: Runtime exited with error: {status}"),
    )
}

/// The caller's error for a result over [`RESPONSE_LIMIT`].
pub fn response_too_large() -> Bytes {
    error_json(
        "Function.ResponseSizeTooLarge",
        &format!(
            "Response payload size exceeded maximum allowed payload size ({RESPONSE_LIMIT} bytes)."
        ),
    )
}

/// The error JSON a runtime posted, unchanged when it is such JSON (an object with
/// `errorMessage` or `errorType`), else wrapped as `errorMessage` with `error_type`.
pub fn posted_error(body: Bytes, error_type: Option<&str>) -> Bytes {
    let is_error_json = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
        .is_ok_and(|m| m.contains_key("errorMessage") || m.contains_key("errorType"));
    if is_error_json {
        return body;
    }
    error_json(
        error_type.unwrap_or("Unhandled"),
        &String::from_utf8_lossy(&body),
    )
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON);
    resp
}

/// A Runtime API error answer (`{"errorMessage","errorType"}`).
pub fn api_error(status: StatusCode, error_type: &str, message: &str) -> Response<ResponseBody> {
    json_response(status, error_json(error_type, message))
}

/// The Invoke API's 413 for a request payload over [`REQUEST_LIMIT`].
pub fn request_too_large() -> Response<ResponseBody> {
    let body = json!({
        "Type": "User",
        "message": format!(
            "Request must be smaller than {REQUEST_LIMIT} bytes for the InvokeFunction operation"
        ),
    });
    let mut resp = json_response(StatusCode::PAYLOAD_TOO_LARGE, Bytes::from(body.to_string()));
    resp.headers_mut().insert(
        HeaderName::from_static(virga_types::headers::X_AMZN_ERROR_TYPE),
        HeaderValue::from_static("RequestEntityTooLargeException"),
    );
    resp
}

/// The Invoke API's 400 for a request it cannot take (`InvalidRequestContentException`).
pub fn invalid_request(message: &str) -> Response<ResponseBody> {
    let body = json!({"Type": "User", "message": message});
    let mut resp = json_response(StatusCode::BAD_REQUEST, Bytes::from(body.to_string()));
    resp.headers_mut().insert(
        HeaderName::from_static(virga_types::headers::X_AMZN_ERROR_TYPE),
        HeaderValue::from_static("InvalidRequestContentException"),
    );
    resp
}

/// The default Content-Type of results and errors.
pub fn application_json() -> HeaderValue {
    APPLICATION_JSON
}
