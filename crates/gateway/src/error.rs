//! The gateway's one error type and its mapping to HTTP status codes. Bodies are plain text
//! messages, as OpenFaaS's gateway answers, so every client can show them as they are.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use thiserror::Error;
use virga_provider::ProviderError;
use virga_store::StoreError;
use virga_types::Invalid;

/// Everything a handler can fail with.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The caller sent something unacceptable (400).
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong credentials (401).
    #[error(
        "unauthorized: give the admin credentials with HTTP basic auth, or an API token as \
         `Authorization: Bearer TOKEN`"
    )]
    Unauthorized,
    /// A bearer token that is not accepted, and why (401).
    #[error("unauthorized: {0}")]
    BadToken(String),
    /// The caller may not do this (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request did not arrive in time (408).
    #[error("{0}")]
    RequestTimeout(String),
    /// Unknown function, secret or route (404).
    #[error("{0}")]
    NotFound(String),
    /// Already exists (409).
    #[error("{0}")]
    Conflict(String),
    /// Body over the limit (413).
    #[error("request body is larger than the limit of {0} bytes")]
    TooLarge(usize),
    /// Content over another limit, e.g. what a bundle unpacks to (413).
    #[error("{0}")]
    ContentTooLarge(String),
    /// Every instance is at its `max_inflight` (429).
    #[error("{0}")]
    TooManyRequests(String),
    /// The instance could not be reached (502).
    #[error("{0}")]
    BadGateway(String),
    /// No instance could serve in time (503).
    #[error("{0}")]
    Unavailable(String),
    /// The function took too long (504).
    #[error("{0}")]
    Timeout(String),
    /// The function failed in a way the platform detected, e.g. an OOM kill (500).
    #[error("{0}")]
    FunctionFailed(String),
    /// A registry refused access (its 401 or 403, with its message).
    #[error("{1}")]
    Registry(StatusCode, String),
    /// The data directory's disk is full (507).
    #[error("{0}")]
    InsufficientStorage(String),
    /// Our fault (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status this error answers with.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized | ApiError::BadToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) | ApiError::ContentTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Registry(status, _) => *status,
            ApiError::FunctionFailed(_) | ApiError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!("{status}: {self}");
        }
        // 401's `WWW-Authenticate` depends on the client: see `auth`.
        (status, format!("{self}\n")).into_response()
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Exists { .. } => ApiError::Conflict(e.to_string()),
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::BadBundle(_) => ApiError::BadRequest(e.to_string()),
            StoreError::TooLarge(_) => ApiError::ContentTooLarge(e.to_string()),
            StoreError::Full(_) => ApiError::InsufficientStorage(e.to_string()),
            StoreError::Unavailable(_) => ApiError::Unavailable(e.to_string()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::NotFound(_) => ApiError::NotFound(e.to_string()),
            ProviderError::NotReady { .. } => ApiError::Unavailable(e.to_string()),
            ProviderError::AtCapacity { .. } => ApiError::TooManyRequests(e.to_string()),
            ProviderError::Prepare { .. } => ApiError::BadRequest(e.to_string()),
        }
    }
}

/// Parse a JSON body, naming the offending field and position on failure.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let bad = |e: String| ApiError::BadRequest(format!("invalid JSON body: {e}"));
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // The path means something only for a value of the wrong shape, not for bad syntax.
        if inner.is_data() && path != "." {
            bad(format!("{path}: {inner}"))
        } else {
            bad(inner.to_string())
        }
    })?;
    de.end().map_err(|e| bad(e.to_string()))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<virga_types::DeleteFunctionRequest>(
            br#"{"functionName": "f", "namespace": {}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("invalid JSON body: namespace: invalid type: map"),
            "{e}"
        );
        let e = parse_json::<virga_types::DeleteFunctionRequest>(b"{not json")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid JSON body: key must be a string"),
            "{e}"
        );
        let e = parse_json::<virga_types::DeleteFunctionRequest>(br#"{"functionName": "f"} x"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("trailing characters"), "{e}");
        parse_json::<virga_types::DeleteFunctionRequest>(br#" {"functionName": "f"} "#).unwrap();
    }
}
