//! Lambda's error answers: a JSON body (`{"Type":"User","message":...}`, or `{"message":...}`
//! for auth failures) with the exception's name in `x-amzn-ErrorType`, which is what the AWS
//! SDKs read to raise `ResourceNotFoundException` and the others.

use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use virga_types::lambda::ErrorBody;

use crate::ApiError;

static X_AMZN_ERROR_TYPE: HeaderName =
    HeaderName::from_static(virga_types::headers::X_AMZN_ERROR_TYPE);

/// Largest request body of the Invoke API (6 MiB, Lambda's synchronous limit).
pub(crate) const MAX_PAYLOAD: usize = 6 * 1024 * 1024;

/// A Lambda API error.
#[derive(Debug)]
pub(crate) struct LambdaError {
    status: StatusCode,
    /// The exception's name.
    kind: &'static str,
    /// `Some("User")`/`Some("Service")`, or none (auth errors carry only a message).
    origin: Option<&'static str>,
    message: String,
    retry_after: Option<u64>,
}

impl LambdaError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        origin: Option<&'static str>,
        m: String,
    ) -> Self {
        LambdaError {
            status,
            kind,
            origin,
            message: m,
            retry_after: None,
        }
    }

    /// 404: no such function (or version).
    pub(crate) fn not_found(arn: &str) -> Self {
        let m = format!("Function not found: {arn}");
        Self::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            Some("User"),
            m,
        )
    }

    /// 403: the caller's role or namespaces do not allow this.
    pub(crate) fn access_denied(m: String) -> Self {
        let kind = "AccessDeniedException";
        Self::new(StatusCode::FORBIDDEN, kind, Some("User"), m)
    }

    /// 400: a parameter is not acceptable.
    pub(crate) fn invalid_parameter(m: String) -> Self {
        let kind = "InvalidParameterValueException";
        Self::new(StatusCode::BAD_REQUEST, kind, Some("User"), m)
    }

    /// 400: the payload is not JSON.
    pub(crate) fn invalid_content(m: String) -> Self {
        let kind = "InvalidRequestContentException";
        Self::new(StatusCode::BAD_REQUEST, kind, Some("User"), m)
    }

    /// 413: the payload is over the limit.
    pub(crate) fn too_large(m: String) -> Self {
        let kind = "RequestEntityTooLargeException";
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, kind, Some("User"), m)
    }

    /// 429: throttled.
    pub(crate) fn too_many(m: String) -> Self {
        let kind = "TooManyRequestsException";
        Self::new(StatusCode::TOO_MANY_REQUESTS, kind, Some("User"), m)
    }

    /// 429 for an address blocked after wrong signatures, with `Retry-After`.
    pub(crate) fn blocked(secs: u64) -> Self {
        let secs = secs.max(1);
        let mut e = Self::too_many(format!(
            "too many wrong signatures from your address: wait {secs} s before trying again"
        ));
        e.retry_after = Some(secs);
        e
    }

    /// A fault of Virga's or of its function path (`ServiceException`).
    pub(crate) fn service(status: StatusCode, m: String) -> Self {
        Self::new(status, "ServiceException", Some("Service"), m)
    }

    /// 403: no credentials at all.
    pub(crate) fn missing_auth() -> Self {
        let kind = "MissingAuthenticationTokenException";
        Self::new(
            StatusCode::FORBIDDEN,
            kind,
            None,
            "Missing Authentication Token".into(),
        )
    }

    /// 403: an access key id (or basic auth password) that is not known.
    pub(crate) fn unrecognized_client() -> Self {
        let m = "The security token included in the request is invalid.".to_string();
        Self::new(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            None,
            m,
        )
    }

    /// 403: a wrong or expired signature.
    pub(crate) fn invalid_signature(m: String) -> Self {
        Self::new(StatusCode::FORBIDDEN, "InvalidSignatureException", None, m)
    }

    /// 403: an authorization header of the wrong shape.
    pub(crate) fn incomplete_signature(m: String) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "IncompleteSignatureException",
            None,
            m,
        )
    }

    /// The HTTP status.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for LambdaError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(
                "Lambda API {}: {}: {}",
                self.status,
                self.kind,
                self.message
            );
        }
        let body = match self.origin {
            Some(kind) => serde_json::to_vec(&ErrorBody {
                kind: kind.into(),
                message: self.message,
            }),
            None => serde_json::to_vec(&serde_json::json!({ "message": self.message })),
        }
        .unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            X_AMZN_ERROR_TYPE.clone(),
            HeaderValue::from_static(self.kind),
        );
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

impl From<ApiError> for LambdaError {
    fn from(e: ApiError) -> Self {
        let status = e.status();
        match e {
            ApiError::NotFound(m) => {
                Self::new(status, "ResourceNotFoundException", Some("User"), m)
            }
            ApiError::TooManyRequests(m) => Self::too_many(m),
            ApiError::Forbidden(_) => Self::access_denied(e.to_string()),
            ApiError::TooLarge(_) | ApiError::ContentTooLarge(_) => Self::too_large(format!(
                "Request must be smaller than {MAX_PAYLOAD} bytes for the InvokeFunction operation"
            )),
            ApiError::BadRequest(m) | ApiError::RequestTimeout(m) => Self::invalid_parameter(m),
            e => Self::service(status, e.to_string()),
        }
    }
}
