//! A pooled instance (`VIRGA_POOL=1`, started by the platform's warm pool from its own copy of
//! a Lambda template): the watchdog and the Runtime API are up, but no runtime runs until the
//! platform binds the instance to a function with one `POST /_/virga/bind` carrying the
//! instance's bind token (`VIRGA_BIND_TOKEN`, known only to the platform and this watchdog).
//! The bind gives the function's code directory and environment; the runtime then starts
//! there, as an unpooled instance's would, and the answer (once the runtime has asked for its
//! first event, or failed its init) proves the token: `X-Virga-Bound: hex(sha256("virga-bound:"
//! + token))`. The token works once; the runtime never sees it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{answers, runtime, until, Lambda};
use crate::body::{text, ResponseBody};
use crate::config::Config;

/// The environment variable marking a pooled instance.
pub(crate) const POOL_ENV: &str = "VIRGA_POOL";
/// The environment variable holding its bind token.
pub(crate) const TOKEN_ENV: &str = "VIRGA_BIND_TOKEN";
/// The request header carrying the token.
const TOKEN_HEADER: &str = "x-virga-bind-token";
/// The answer header carrying the proof.
const PROOF_HEADER: &str = "x-virga-bound";
/// Largest bind body (a code path and an environment).
const MAX_BIND: usize = 1 << 20;

/// What a bind says.
#[derive(Deserialize)]
struct Bind {
    /// The function's code directory (the runtime's working directory before
    /// `LAMBDA_TASK_ROOT`).
    dir: PathBuf,
    /// The function's environment.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// A pooled instance's bind state.
pub(crate) struct Pool {
    /// Taken by the one bind that may happen.
    token: Mutex<Option<String>>,
    config: Config,
    api: SocketAddr,
}

impl Pool {
    /// `Some` when the platform started this watchdog as a pooled instance.
    pub(crate) fn from_env(config: &Config, api: SocketAddr) -> Option<Pool> {
        let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty())?;
        (std::env::var(POOL_ENV).as_deref() == Ok("1")).then(|| Pool {
            token: Mutex::new(Some(token)),
            config: config.clone(),
            api,
        })
    }

    /// Answers a call to an unbound instance: the bind, or 503 for anything else.
    pub(crate) async fn bind(
        &self,
        lambda: &Lambda,
        req: Request<Incoming>,
    ) -> Response<ResponseBody> {
        if req.method() != Method::POST || req.uri().path() != "/_/virga/bind" {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "this pooled instance is not bound to a function yet",
            );
        }
        let given = req
            .headers()
            .get(TOKEN_HEADER)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default();
        let body = match Limited::new(req.into_body(), MAX_BIND).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("bind body: {e}")),
        };
        let bind: Bind = match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("bind body: {e}")),
        };
        let Some(token) = self.take_token(&given) else {
            return text(StatusCode::FORBIDDEN, "bind refused");
        };
        let settings = runtime::Settings::new(&self.config, self.api, &bind.env, bind.dir);
        let shared = &lambda.shared;
        *shared.settings.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(settings);
        shared.state.send_modify(|s| s.unbound = false);
        let supervisor = tokio::spawn(runtime::supervise(Arc::clone(shared)));
        lambda
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(supervisor);
        until(&mut shared.state.subscribe(), answers).await;
        let proof = hex::encode(Sha256::digest(format!("virga-bound:{token}")));
        let mut resp = text(StatusCode::OK, "bound");
        if let Ok(v) = HeaderValue::from_str(&proof) {
            resp.headers_mut().insert(PROOF_HEADER, v);
        }
        resp
    }

    /// The token, taken (it binds once) when `given` is it.
    fn take_token(&self, given: &[u8]) -> Option<String> {
        let mut slot = self.token.lock().unwrap_or_else(|p| p.into_inner());
        let ok = slot
            .as_deref()
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(given)));
        if ok {
            slot.take()
        } else {
            None
        }
    }
}
