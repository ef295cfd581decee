//! HTTP basic auth for `/system/*`: one admin user, compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::{ApiError, AppState};

/// The admin credentials.
#[derive(Clone)]
pub struct Credentials {
    /// `user:password` as basic auth encodes it before base64.
    expected: Vec<u8>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

impl Credentials {
    /// Credentials for `user` with `password`.
    pub fn new(user: &str, password: &str) -> Credentials {
        Credentials {
            expected: format!("{user}:{password}").into_bytes(),
        }
    }

    /// True when an `Authorization` header value carries these credentials.
    pub fn check(&self, header: &[u8]) -> bool {
        let Some(b64) = header.strip_prefix(b"Basic ") else {
            return false;
        };
        let Ok(given) = base64::engine::general_purpose::STANDARD.decode(b64.trim_ascii()) else {
            return false;
        };
        given.ct_eq(&self.expected).into()
    }
}

/// Middleware: 401 with `WWW-Authenticate` unless the request carries the credentials.
pub(crate) async fn require(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let ok = req
        .headers()
        .get(AUTHORIZATION)
        .is_some_and(|v| state.credentials.check(v.as_bytes()));
    if ok {
        Ok(next.run(req).await)
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_basic_auth() {
        let c = Credentials::new("admin", "s3cret");
        let good = base64::engine::general_purpose::STANDARD.encode("admin:s3cret");
        assert!(c.check(format!("Basic {good}").as_bytes()));
        let bad = base64::engine::general_purpose::STANDARD.encode("admin:s3cre");
        assert!(!c.check(format!("Basic {bad}").as_bytes()));
        assert!(!c.check(b"Bearer x"));
        assert!(!c.check(b"Basic !!!"));
    }
}
