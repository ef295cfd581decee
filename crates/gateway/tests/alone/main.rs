//! The gateway alone: its routing, auth, error mapping and header handling, served in-process
//! on an ephemeral port over [`WatchdogProvider`], whose instances are real `virga-watchdog`
//! processes. No runc, no root, no `virga up`. WebSockets through it (upgrade) use the
//! `websockets` package from PyPI.

mod auth;
mod errors;
mod headers;
mod lambda;
mod routing;
mod upgrade;

use std::sync::Arc;

use reqwest::{Method, RequestBuilder, Response};
use serde_json::{json, Value};
use virga_gateway::{AppState, Credentials, GatewayConfig, Listeners, ServeConfig};
use virga_testkit::{WatchdogProvider, PASSWORD};

/// A gateway served by this test process until dropped.
pub struct Gateway {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The provider behind it.
    pub provider: Arc<WatchdogProvider>,
    /// HTTP client (no proxy from the environment).
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// A gateway with the default settings.
    pub async fn start() -> Gateway {
        Gateway::start_with(GatewayConfig::default()).await
    }

    /// A gateway with `cfg`, on a fresh store.
    pub async fn start_with(cfg: GatewayConfig) -> Gateway {
        Gateway::start_serving(cfg, ServeConfig::default()).await
    }

    /// A gateway with `cfg` whose listener treats connections as `serve` says.
    pub async fn start_serving(cfg: GatewayConfig, serve: ServeConfig) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let store =
            virga_store::Store::open(dir.path(), virga_store::SecretsKey::random()).unwrap();
        let provider = WatchdogProvider::new();
        let state = AppState::new(
            cfg,
            Arc::new(store),
            provider.clone(),
            Credentials::new("admin", PASSWORD),
            Arc::new(virga_metrics::Metrics::new()),
            Arc::new(virga_logs::LogHub::new(virga_logs::LogConfig::default())),
        );
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", api.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listeners = Listeners {
            api,
            console: None,
            tls: None,
        };
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            virga_gateway::serve(listeners, state, &serve, shutdown).await
        });
        Gateway {
            url,
            provider,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            stop: Some(stop),
            _dir: dir,
        }
    }

    /// A request to `path` without credentials.
    pub fn anon(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url))
    }

    /// A request to `path` with the admin credentials.
    pub fn sys(&self, method: Method, path: &str) -> RequestBuilder {
        self.anon(method, path).basic_auth("admin", Some(PASSWORD))
    }

    /// Deploy `name` running `process` per request, with the fields of `extra` added; asserts
    /// 202.
    pub async fn deploy(&self, name: &str, process: &str, extra: Value) {
        let mut body = json!({"service": name, "image": "", "envProcess": process});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        let r = self
            .sys(Method::POST, "/system/functions")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            202,
            "deploy {body}: {}",
            r.text().await.unwrap()
        );
    }

    /// GET `path` without credentials.
    pub async fn get(&self, path: &str) -> Response {
        self.anon(Method::GET, path).send().await.unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A classic function that prints its request's CGI variables named in `vars`, one
/// `NAME=value` line each.
pub fn printer(vars: &[&str]) -> String {
    let lines: Vec<String> = vars.iter().map(|v| format!("\"{v}=${v}\"")).collect();
    format!("sh -c 'printf \"%s\\n\" {}'", lines.join(" "))
}

/// The status, and the body as text.
pub async fn answer(r: Response) -> (u16, String) {
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}
