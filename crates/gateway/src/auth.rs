//! Auth for `/system/*`: HTTP basic auth of one admin user, compared in constant time, or an
//! API token as `Authorization: Bearer` ([`crate::tokens`]), with a backoff per client
//! address on wrong passwords and unknown tokens ([`crate::backoff`]).
//!
//! Browsers are never asked for basic credentials: a 401 to a browser request carries no
//! `WWW-Authenticate: Basic`, so no browser shows a password prompt or caches what was typed
//! for an origin where function pages run. API clients (faas-cli, curl, the SDKs) still get
//! the challenge, as from OpenFaaS.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::listener::ClientAddr;
use crate::tokens::CallerToken;
use crate::{ApiError, AppState, Principal};

static SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");

/// The admin credentials.
#[derive(Clone)]
pub struct Credentials {
    /// `user:password` as basic auth encodes it before base64.
    expected: Vec<u8>,
    /// The user, which is also the Lambda API's access key id.
    user: String,
    /// The password, which is also that key's secret access key.
    password: String,
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
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    /// The admin these credentials sign in.
    pub(crate) fn admin(&self) -> Principal {
        Principal::admin(&self.user)
    }

    /// The secret access key of the SigV4 access key id `key_id`, if it is known.
    pub(crate) fn secret_for(&self, key_id: &str) -> Option<&str> {
        (key_id == self.user).then_some(self.password.as_str())
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

/// Middleware: 401 unless the request carries the admin's credentials or a valid token;
/// 429 while its address is blocked after too many wrong ones. The caller goes into the
/// request's extensions as a [`Principal`] (and, for a token, a [`CallerToken`]).
pub(crate) async fn require(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    match identify(&state, &req) {
        Ok((principal, token)) => {
            req.extensions_mut().insert(principal);
            if let Some(caller) = token {
                req.extensions_mut().insert(caller);
            }
            next.run(req).await
        }
        Err(refused) => refused,
    }
}

/// Who sent `req`: the admin (basic auth) or a token's holder, or the answer refusing it.
pub(crate) fn identify(
    state: &AppState,
    req: &Request,
) -> Result<(Principal, Option<CallerToken>), Response> {
    let ip = req
        .extensions()
        .get::<ClientAddr>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.0);
    let now = Instant::now();
    if let Some(wait) = state.backoff.blocked(ip, now) {
        return Err(too_many(wait.as_secs_f64().ceil() as u64));
    }
    let Some(given) = req.headers().get(header::AUTHORIZATION) else {
        return Err(unauthorized(req.headers()));
    };
    if let Some(token) = given.as_bytes().strip_prefix(b"Bearer ") {
        return crate::tokens::authenticate(state, token, ip, now)
            .map(|(principal, caller)| (principal, Some(caller)))
            .map_err(|e| bearer_refused(req.headers(), e));
    }
    if state.credentials.check(given.as_bytes()) {
        state.backoff.succeeded(ip);
        return Ok((state.credentials.admin(), None));
    }
    if let Some(wait) = state.backoff.failed(ip, now) {
        tracing::warn!(client = %ip, "wrong admin credentials: blocked for {wait:?}");
    }
    Err(unauthorized(req.headers()))
}

/// Whether a request comes from a browser (which sends `Sec-Fetch-*` on every request, or
/// asks for a page).
fn from_browser(h: &HeaderMap) -> bool {
    h.contains_key(&SEC_FETCH_MODE)
        || h.get_all(header::ACCEPT)
            .iter()
            .any(|v| v.as_bytes().windows(9).any(|w| w == b"text/html"))
}

fn unauthorized(h: &HeaderMap) -> Response {
    let mut resp = ApiError::Unauthorized.into_response();
    if !from_browser(h) {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"virga\""),
        );
    }
    resp
}

/// A refused bearer token's answer: API clients are told it is a bearer token that failed
/// (RFC 6750), so they do not retry with a password.
fn bearer_refused(h: &HeaderMap, e: ApiError) -> Response {
    let unauthorized = matches!(e, ApiError::BadToken(_));
    let mut resp = e.into_response();
    if unauthorized && !from_browser(h) {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"virga\", error=\"invalid_token\""),
        );
    }
    resp
}

fn too_many(secs: u64) -> Response {
    let secs = secs.max(1);
    let mut resp = (
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "too many wrong admin passwords from your address: wait {secs} s before trying again\n"
        ),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    resp
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

    #[test]
    fn browsers_get_no_basic_challenge() {
        let mut h = HeaderMap::new();
        assert!(!from_browser(&h), "curl and faas-cli");
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!from_browser(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml"),
        );
        assert!(from_browser(&h));
        let mut h = HeaderMap::new();
        h.insert(&SEC_FETCH_MODE, HeaderValue::from_static("cors"));
        assert!(from_browser(&h));
    }
}
