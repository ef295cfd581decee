//! The one HTTP client every command uses to talk to a gateway: it knows the base URL,
//! adds basic auth or an API token to `/system` routes, and turns transport failures and error answers
//! into messages that say what to do next ("is `virga up` running?", "run `virga login`").

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::{self, Auth};

/// How long an API call (not an invocation or upload) may take.
const API_TIMEOUT: Duration = Duration::from_secs(60);

/// A gateway client: base URL, optional credentials and a reusable connection pool.
pub struct Client {
    base: String,
    auth: Option<Auth>,
    http: reqwest::blocking::Client,
}

impl Client {
    /// A client for `gateway` using the credentials `virga login` stored or the environment gives.
    pub fn connect(gateway: &str) -> Result<Client> {
        let auth = config::auth_for(gateway)?;
        Client::with_credentials(gateway, auth)
    }

    /// A client for `gateway` with explicit credentials.
    pub fn with_credentials(gateway: &str, auth: Option<Auth>) -> Result<Client> {
        let base = config::normalise_gateway(gateway);
        let url = reqwest::Url::parse(&base)
            .with_context(|| format!("{base:?} is not a valid gateway URL"))?;
        let mut builder = reqwest::blocking::Client::builder()
            .timeout(None)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("virga-cli/", env!("CARGO_PKG_VERSION")));
        let local = matches!(
            url.host_str(),
            Some("localhost" | "127.0.0.1" | "[::1]" | "::1")
        );
        if local {
            // A proxy from the environment cannot reach our own loopback gateway.
            builder = builder.no_proxy();
        }
        let http = builder.build().context("cannot create the HTTP client")?;
        Ok(Client { base, auth, http })
    }

    /// The gateway's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The public URL of a function.
    pub fn function_url(&self, name: &str) -> String {
        format!("{}/function/{name}", self.base)
    }

    /// A request to `path` (starting with `/`); `/system` routes get auth and the API timeout.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut rb = self.http.request(method, format!("{}{path}", self.base));
        if path.starts_with("/system") {
            rb = self.authorize(rb.timeout(API_TIMEOUT));
        }
        rb
    }

    fn authorize(&self, rb: RequestBuilder) -> RequestBuilder {
        match &self.auth {
            Some(Auth::Basic(c)) => rb.basic_auth(&c.username, Some(&c.password)),
            Some(Auth::Token(t)) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// A request to `path` with auth but no overall timeout, for answers that stream (logs -f).
    pub fn request_streaming(&self, method: Method, path: &str) -> RequestBuilder {
        self.authorize(self.http.request(method, format!("{}{path}", self.base)))
    }

    /// Send a request; transport errors and the gateway's own 401 become errors, other
    /// answers are returned (a 401 without a Basic challenge is a registry's, relayed by a
    /// deploy: its message is the caller's to show).
    pub fn send(&self, rb: RequestBuilder) -> Result<Response> {
        let resp = rb.send().map_err(|e| self.transport_error(&e))?;
        let challenge = resp.headers().get(reqwest::header::WWW_AUTHENTICATE);
        let bearer = challenge.is_some_and(|c| c.as_bytes().starts_with(b"Bearer"));
        let challenged = challenge.is_some();
        if resp.status() == StatusCode::UNAUTHORIZED && bearer {
            let why = error_message(&resp.text().unwrap_or_default());
            bail!(
                "unauthorised at {}: {why} (run `virga login --token-stdin` with a valid \
                 token, or set VIRGA_TOKEN)",
                self.base
            );
        }
        if resp.status() == StatusCode::UNAUTHORIZED && challenged {
            let hint = if self.auth.is_some() {
                "the stored or given password was refused"
            } else {
                "no password is known for this gateway"
            };
            bail!(
                "unauthorised at {} ({hint}): run `virga login --password-stdin` or set VIRGA_PASSWORD",
                self.base
            );
        }
        Ok(resp)
    }

    /// Send a request and fail with the gateway's message unless it answers 2xx.
    pub fn send_ok(&self, rb: RequestBuilder, what: &str) -> Result<Response> {
        let resp = self.send(rb)?;
        ensure_success(resp, what)
    }

    /// `GET path` and decode its JSON answer.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str, what: &str) -> Result<T> {
        let resp = self.send_ok(self.request(Method::GET, path), what)?;
        resp.json()
            .with_context(|| format!("{what}: the gateway's answer is not the expected JSON"))
    }

    /// `GET path` and return its body as text (for `--json` output).
    pub fn get_text(&self, path: &str, what: &str) -> Result<String> {
        let resp = self.send_ok(self.request(Method::GET, path), what)?;
        resp.text()
            .with_context(|| format!("{what}: cannot read the answer"))
    }

    /// Send `body` as JSON with `method` to `path`; returns the answer whatever its status.
    pub fn send_json<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<Response> {
        self.send(self.request(method, path).json(body))
    }

    fn transport_error(&self, e: &reqwest::Error) -> anyhow::Error {
        let cause = root_cause(e);
        if e.is_connect() || e.is_timeout() {
            anyhow!(
                "cannot reach gateway at {}: is `virga up` running? ({cause})",
                self.base
            )
        } else {
            anyhow!("request to gateway at {} failed: {cause}", self.base)
        }
    }
}

/// The innermost cause of an error, in words (`connection refused`, `timed out`, ...).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if let Some(io) = cur.downcast_ref::<std::io::Error>() {
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => return "connection refused".into(),
            std::io::ErrorKind::TimedOut => return "timed out".into(),
            _ => {}
        }
    }
    let text = cur.to_string();
    if text.contains("timed out") {
        "timed out".into()
    } else {
        text
    }
}

/// Pass a 2xx answer through; otherwise an error carrying the gateway's message.
pub fn ensure_success(resp: Response, what: &str) -> Result<Response> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().unwrap_or_default();
    Err(anyhow!(
        "{what}: gateway answered {}: {}",
        status_text(status),
        error_message(&body)
    ))
}

/// `404 Not Found`.
pub fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("{} {reason}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

/// The message of an error body: a JSON `message`/`error` field, or the trimmed text.
pub fn error_message(body: &str) -> String {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(body) {
        for key in ["message", "error", "reason"] {
            if let Some(serde_json::Value::String(s)) = map.get(key) {
                return s.trim().to_string();
            }
        }
    }
    let text = body.trim();
    if text.is_empty() {
        "(no message)".to_string()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_error_messages() {
        assert_eq!(
            error_message(r#"{"message":"no such function"}"#),
            "no such function"
        );
        assert_eq!(error_message("  plain text\n"), "plain text");
        assert_eq!(error_message(""), "(no message)");
    }

    #[test]
    fn unreachable_gateway_says_what_to_do() {
        // Port 1 on loopback is essentially never listening.
        let c = Client::with_credentials("http://127.0.0.1:1", None).unwrap();
        let err = c
            .get_json::<serde_json::Value>("/system/info", "info")
            .unwrap_err()
            .to_string();
        assert!(err.contains("is `virga up` running?"), "{err}");
        assert!(err.contains("connection refused"), "{err}");
    }
}
