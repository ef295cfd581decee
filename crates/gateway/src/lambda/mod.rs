//! The AWS Lambda API under `/2015-03-31/functions`, so the AWS SDKs and CLI call Virga's
//! functions: `Invoke` ([`invoke`]), `ListFunctions`, `GetFunction` and
//! `GetFunctionConfiguration` ([`functions`]).
//! Every request is authenticated by [`authenticate`]: AWS Signature Version 4 with the
//! access key id `admin` and the admin password as secret key, or an access-key token's id
//! and secret ([`sigv4`]), or the gateway's ordinary basic auth; handlers check the caller's
//! role and namespaces as `/system` routes do. Errors are Lambda's JSON ([`error`]).

mod error;
mod functions;
mod invoke;
mod sigv4;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sha2::Digest;
use virga_types::lambda::{function_arn, ACCOUNT_ID};
use zeroize::Zeroizing;

use crate::listener::ClientAddr;
use crate::replay::DrainingLimit;
use crate::{AppState, Need, Principal};
pub(crate) use error::LambdaError;
use error::MAX_PAYLOAD;

static X_AMZN_REQUEST_ID: HeaderName =
    HeaderName::from_static(virga_types::headers::X_AMZN_REQUEST_ID);

/// KiB of request bodies held at once before their signature is checked: a forged header
/// passes the checks made before the body is read, so without a bound concurrent forgers
/// could make the gateway hold 6 MiB per connection.
pub(crate) const UNVERIFIED_KIB: usize = 256 * 1024;

/// The service a signature must be for.
const SERVICE: &str = "lambda";
/// The region of ARNs when the request names none (basic auth).
const DEFAULT_REGION: &str = "us-east-1";

/// What [`authenticate`] found out about a request, for its handler.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// The request id (`x-amzn-RequestId`; the call's `X-Call-Id`).
    pub(crate) request_id: String,
    /// The region of the signature's scope (ARNs name it).
    pub(crate) region: String,
    /// Who signed: the admin or an access-key token.
    pub(crate) who: Principal,
}

impl Caller {
    /// A Lambda `AccessDeniedException` unless the caller may do `need` to the function
    /// keyed `key` (`NAME` or `NAME.NAMESPACE`).
    pub(crate) fn check(&self, need: Need, key: &str) -> Result<(), LambdaError> {
        let (_, ns) = virga_types::split_key(key);
        self.who
            .check(need, ns)
            .map_err(|e| LambdaError::access_denied(e.to_string()))
    }

    /// The ARN of `name` (with `:qualifier`, if any) in the caller's region.
    pub(crate) fn arn(&self, name: &str) -> String {
        function_arn(&self.region, name)
    }
}

/// The Lambda API's routes, behind [`authenticate`].
pub(crate) fn routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/2015-03-31/functions", get(functions::list))
        .route("/2015-03-31/functions/", get(functions::list))
        .route("/2015-03-31/functions/{name}", get(functions::get_one))
        .route(
            "/2015-03-31/functions/{name}/configuration",
            get(functions::get_configuration),
        )
        .route(
            "/2015-03-31/functions/{name}/invocations",
            post(invoke::invoke),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
}

/// Middleware: read the body (413 over 6 MiB), check the signature or basic auth (403 in
/// Lambda's shape otherwise; 429 while the address is blocked after wrong ones), and give the
/// answer an `x-amzn-RequestId`.
async fn authenticate(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut resp = match admit(&state, req, &request_id).await {
        Ok(req) => next.run(req).await,
        Err(e) => e.into_response(),
    };
    if !resp.headers().contains_key(&X_AMZN_REQUEST_ID) {
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(X_AMZN_REQUEST_ID.clone(), v);
        }
    }
    resp
}

/// The request with its body read and a [`Caller`] attached, if its credentials are good.
/// Everything but the signature itself is checked before the body is read, so a refused
/// request never has its body held in memory (only drained, so its client gets the answer).
async fn admit(state: &AppState, req: Request, request_id: &str) -> Result<Request, LambdaError> {
    let ip = req
        .extensions()
        .get::<ClientAddr>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.0);
    let now = Instant::now();
    if let Some(wait) = state.backoff.blocked(ip, now) {
        return Err(LambdaError::blocked(wait.as_secs_f64().ceil() as u64));
    }
    let (parts, body) = req.into_parts();
    let too_large = || {
        LambdaError::too_large(format!(
            "Request must be smaller than {MAX_PAYLOAD} bytes for the InvokeFunction operation"
        ))
    };
    crate::invoke::declared_length(&parts.headers, MAX_PAYLOAD * 4).map_err(|_| too_large())?;
    let given = parts.headers.get(header::AUTHORIZATION);
    let checked = match given {
        None => Err(Wrong::Missing),
        Some(v) if sigv4::is_sigv4(v.as_bytes()) => {
            check_scope(state, v, &parts.headers).map(|()| None)
        }
        Some(v) if state.credentials.check(v.as_bytes()) => Ok(Some((
            DEFAULT_REGION.to_string(),
            state.credentials.admin(),
        ))),
        Some(_) => Err(Wrong::Key),
    };
    let region = match checked {
        Err(wrong) => {
            drain(body).await;
            return Err(refuse(state, ip, now, wrong));
        }
        Ok(region) => region,
    };
    // Room for a body whose signature is still to be checked (the whole limit when its
    // length is unknown); basic auth was checked in full already.
    let _room = match region {
        Some(_) => None,
        None => Some(unverified_room(state, &parts.headers).await?),
    };
    let body = axum::body::to_bytes(Body::new(DrainingLimit::new(body, MAX_PAYLOAD)), usize::MAX)
        .await
        .map_err(|_| too_large())?;
    let (region, who) = match (region, given) {
        (Some(r), _) => r,
        (None, Some(v)) => {
            check_signature(state, &parts, v, &body).map_err(|w| refuse(state, ip, now, w))?
        }
        (None, None) => return Err(refuse(state, ip, now, Wrong::Missing)),
    };
    state.backoff.succeeded(ip);
    let mut req = Request::from_parts(parts, Body::from(body));
    req.extensions_mut().insert(Caller {
        request_id: request_id.to_string(),
        region,
        who,
    });
    Ok(req)
}

/// A share of [`UNVERIFIED_KIB`] for the body `headers` announce, waited for.
async fn unverified_room<'a>(
    state: &'a AppState,
    headers: &HeaderMap,
) -> Result<tokio::sync::SemaphorePermit<'a>, LambdaError> {
    let declared = crate::invoke::declared_length(headers, MAX_PAYLOAD)
        .ok()
        .flatten();
    let kib = declared
        .map_or(MAX_PAYLOAD, |n| n as usize)
        .div_ceil(1024)
        .max(1);
    state
        .lambda_unverified
        .acquire_many(kib as u32)
        .await
        .map_err(|_| LambdaError::service(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()))
}

/// Read and drop a refused request's body (at most four times the payload limit, as
/// [`DrainingLimit`] does), holding none of it.
async fn drain(mut body: Body) {
    use http_body_util::BodyExt;
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, |d| d.len());
        if seen > MAX_PAYLOAD * 4 {
            return;
        }
    }
}

/// The answer to refused credentials; wrong ones count in the address's backoff.
fn refuse(state: &AppState, ip: IpAddr, now: Instant, wrong: Wrong) -> LambdaError {
    match wrong {
        Wrong::Missing => return LambdaError::missing_auth(),
        Wrong::Shape(m) => return LambdaError::incomplete_signature(m),
        Wrong::Store(e) => return crate::ApiError::from(e).into(),
        Wrong::Key | Wrong::Signature(_) => {}
    }
    if let Some(wait) = state.backoff.failed(ip, now) {
        tracing::warn!(client = %ip, "wrong Lambda API credentials: blocked for {wait:?}");
    }
    match wrong {
        Wrong::Signature(m) => LambdaError::invalid_signature(m),
        _ => LambdaError::unrecognized_client(),
    }
}

/// Why credentials were refused.
enum Wrong {
    /// No `Authorization` header.
    Missing,
    /// Unknown access key id, or a wrong basic auth password.
    Key,
    /// A signature that does not match (or has expired).
    Signature(String),
    /// An authorization header that is not SigV4's shape (not counted as a wrong guess).
    Shape(String),
    /// The store could not look the key up.
    Store(virga_store::StoreError),
}

impl From<sigv4::Refusal> for Wrong {
    fn from(r: sigv4::Refusal) -> Self {
        match r {
            sigv4::Refusal::Incomplete(m) => Wrong::Shape(m),
            sigv4::Refusal::BadSignature(m) => Wrong::Signature(m),
        }
    }
}

/// A SigV4 header's value, parsed.
fn parsed(given: &HeaderValue) -> Result<sigv4::Authorization<'_>, Wrong> {
    let value = given
        .to_str()
        .map_err(|_| Wrong::Shape("the Authorization header is not ASCII".into()))?;
    Ok(sigv4::parse(value)?)
}

/// The secret access key of `key_id` and who it signs in: the admin's, or a valid
/// access-key token's (read from the store each time, so a revocation holds at once).
fn secret_for(state: &AppState, key_id: &str) -> Result<(Zeroizing<String>, Principal), Wrong> {
    if let Some(password) = state.credentials.secret_for(key_id) {
        return Ok((
            Zeroizing::new(password.to_string()),
            state.credentials.admin(),
        ));
    }
    match state.store.access_key(key_id, chrono::Utc::now()) {
        Ok(Some((info, secret))) => {
            let who = crate::tokens::principal_of(&info).map_err(|_| Wrong::Key)?;
            Ok((secret, who))
        }
        Ok(None) => Err(Wrong::Key),
        Err(e) => Err(Wrong::Store(e)),
    }
}

/// The checks of a SigV4 header that need no body: its shape, key, service and time.
fn check_scope(state: &AppState, given: &HeaderValue, headers: &HeaderMap) -> Result<(), Wrong> {
    let auth = parsed(given)?;
    secret_for(state, auth.key_id)?;
    sigv4::check_scope(&auth, headers, SERVICE, SystemTime::now())?;
    Ok(())
}

/// Check a SigV4 `Authorization` header over the request and `body`; returns the scope's
/// region and who signed.
fn check_signature(
    state: &AppState,
    parts: &axum::http::request::Parts,
    given: &HeaderValue,
    body: &Bytes,
) -> Result<(String, Principal), Wrong> {
    let auth = parsed(given)?;
    let (secret, who) = secret_for(state, auth.key_id)?;
    let sha = hex::encode(sha2::Sha256::digest(body));
    let signed = sigv4::Signed {
        method: &parts.method,
        path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        headers: &parts.headers,
        body_sha256: &sha,
    };
    sigv4::verify(&auth, &signed, &secret, SERVICE, SystemTime::now())?;
    Ok((auth.region.to_string(), who))
}

/// The function a `FunctionName` path parameter (and `?Qualifier=`) names: `NAME`,
/// `NAME:QUALIFIER`, `ACCOUNT:function:NAME[:QUALIFIER]` or the full ARN. Only the
/// `$LATEST` qualifier exists; any other is not found.
pub(crate) fn resolve(
    raw: &str,
    qualifier: Option<&str>,
    caller: &Caller,
) -> Result<String, LambdaError> {
    let parts: Vec<&str> = raw.split(':').collect();
    let (account, name, from_name) = match parts[..] {
        [name] => (ACCOUNT_ID, name, None),
        [name, q] => (ACCOUNT_ID, name, Some(q)),
        [account, "function", name] => (account, name, None),
        [account, "function", name, q] => (account, name, Some(q)),
        ["arn", _, "lambda", _, account, "function", name] => (account, name, None),
        ["arn", _, "lambda", _, account, "function", name, q] => (account, name, Some(q)),
        _ => {
            return Err(LambdaError::invalid_parameter(format!(
                "FunctionName {raw:?} is not a function name, NAME:QUALIFIER, \
                 ACCOUNT:function:NAME or arn:aws:lambda:REGION:ACCOUNT:function:NAME"
            )))
        }
    };
    if name.is_empty() {
        return Err(LambdaError::invalid_parameter(
            "FunctionName must not be empty".into(),
        ));
    }
    let qualifier = match (from_name, qualifier) {
        (Some(a), Some(b)) if a != b => {
            return Err(LambdaError::invalid_parameter(
                "The derived qualifier from the function name does not match the specified \
                 qualifier."
                    .into(),
            ))
        }
        (a, b) => a.or(b),
    };
    if let Some(q) = qualifier.filter(|q| *q != "$LATEST") {
        return Err(LambdaError::not_found(&format!("{}:{q}", caller.arn(name))));
    }
    // `name.namespace` names a function of another namespace, as `/function/` does.
    let (function, ns) = name.split_once('.').unwrap_or((name, ""));
    let valid = |field: &str, v: &str| virga_types::validate_name(field, v).is_ok();
    if account != ACCOUNT_ID
        || !valid("function name", function)
        || !(ns.is_empty() || valid("namespace", ns))
    {
        return Err(LambdaError::not_found(&caller.arn(name)));
    }
    Ok(virga_types::function_key(function, ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller {
            request_id: "r".into(),
            region: "eu-west-1".into(),
            who: Principal::admin("admin"),
        }
    }

    #[test]
    fn callers_act_only_in_their_namespaces() {
        let c = Caller {
            who: Principal {
                name: "token:t".into(),
                role: crate::Role::Invoker,
                namespaces: Some(vec!["team-a".into()]),
            },
            ..caller()
        };
        assert!(c.check(Need::Invoke, "f.team-a").is_ok());
        assert_eq!(
            c.check(Need::Invoke, "f").unwrap_err().status(),
            StatusCode::FORBIDDEN
        );
        assert!(c.check(Need::Deploy, "f.team-a").is_err());
    }

    #[test]
    fn function_names_arns_and_qualifiers() {
        let c = caller();
        let ok = |raw: &str, q: Option<&str>| resolve(raw, q, &c).unwrap();
        assert_eq!(ok("echo", None), "echo");
        assert_eq!(ok("echo:$LATEST", None), "echo");
        assert_eq!(ok("echo", Some("$LATEST")), "echo");
        assert_eq!(ok("000000000000:function:echo", None), "echo");
        let arn = "arn:aws:lambda:us-west-2:000000000000:function:echo";
        assert_eq!(ok(arn, None), "echo");
        assert_eq!(ok(&format!("{arn}:$LATEST"), None), "echo");
        let status = |raw: &str, q: Option<&str>| resolve(raw, q, &c).unwrap_err().status();
        assert_eq!(status("echo:prod", None), 404);
        assert_eq!(status("echo", Some("1")), 404);
        assert_eq!(status("echo:1", Some("2")), 400);
        assert_eq!(status("123456789012:function:echo", None), 404);
        assert_eq!(status("Not_A_Name", None), 404);
        assert_eq!(status("a:b:c:d:e", None), 400);
        assert_eq!(status("", None), 400);
    }
}
