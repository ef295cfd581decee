//! `virga up`'s event connectors: cron always, NATS with `--nats-url` (`VIRGA_NATS_URL`),
//! MQTT with `--mqtt-url` (`VIRGA_MQTT_URL`). Broker passwords and tokens come from files or
//! the environment, never from the command line, where `ps` would show them. TLS (`tls://`,
//! `mqtts://`) trusts a CA file (`--nats-ca`, `--mqtt-ca`) or the system's roots, with an
//! optional client certificate and key for mutual TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use virga_connectors::mqtt::MqttConfig;
use virga_connectors::nats::NatsConfig;
use virga_connectors::TlsFiles;
use virga_gateway::{AppState, TriggersConfig};

/// Options of `virga up` for event triggers.
#[derive(Debug, Clone, clap::Args)]
pub struct TriggerArgs {
    /// NATS server for `topic` triggers (NATS core subjects, JetStream with
    /// `virga.nats.stream`): nats://HOST:PORT, or tls://HOST:PORT. Off when unset.
    #[arg(long, env = "VIRGA_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS user; the password is read from VIRGA_NATS_PASSWORD or --nats-password-file.
    #[arg(long, env = "VIRGA_NATS_USER")]
    pub nats_user: Option<String>,
    /// File holding the NATS password.
    #[arg(long, env = "VIRGA_NATS_PASSWORD_FILE")]
    pub nats_password_file: Option<PathBuf>,
    /// File holding a NATS token.
    #[arg(long, env = "VIRGA_NATS_TOKEN_FILE")]
    pub nats_token_file: Option<PathBuf>,
    /// NATS `.creds` file (JWT and NKey seed).
    #[arg(long, env = "VIRGA_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// PEM CA certificate(s) the NATS server's TLS certificate must be signed by (default:
    /// the system's roots); makes TLS required.
    #[arg(long, env = "VIRGA_NATS_CA")]
    pub nats_ca: Option<PathBuf>,
    /// PEM client certificate for NATS mutual TLS (with --nats-key).
    #[arg(long, env = "VIRGA_NATS_CERT")]
    pub nats_cert: Option<PathBuf>,
    /// PEM private key of --nats-cert.
    #[arg(long, env = "VIRGA_NATS_KEY")]
    pub nats_key: Option<PathBuf>,
    /// MQTT broker for `topic` triggers (MQTT 3.1.1 or 5, QoS 1): mqtt://HOST:PORT, or
    /// mqtts://HOST:PORT for TLS. Off when unset.
    #[arg(long, env = "VIRGA_MQTT_URL")]
    pub mqtt_url: Option<String>,
    /// MQTT protocol version: 3.1.1 or 5.
    #[arg(long, env = "VIRGA_MQTT_VERSION", default_value = "3.1.1", value_parser = ["3.1.1", "5"])]
    pub mqtt_version: String,
    /// MQTT client id of Virga's persistent session (keep it fixed across restarts, and
    /// distinct per `virga up` on one broker).
    #[arg(long, env = "VIRGA_MQTT_CLIENT_ID", default_value = "virga")]
    pub mqtt_client_id: String,
    /// MQTT user; the password is read from VIRGA_MQTT_PASSWORD or --mqtt-password-file.
    #[arg(long, env = "VIRGA_MQTT_USER")]
    pub mqtt_user: Option<String>,
    /// File holding the MQTT password.
    #[arg(long, env = "VIRGA_MQTT_PASSWORD_FILE")]
    pub mqtt_password_file: Option<PathBuf>,
    /// PEM CA certificate(s) the MQTT broker's TLS certificate must be signed by (default:
    /// the system's roots); needs mqtts://.
    #[arg(long, env = "VIRGA_MQTT_CA")]
    pub mqtt_ca: Option<PathBuf>,
    /// PEM client certificate for MQTT mutual TLS (with --mqtt-key).
    #[arg(long, env = "VIRGA_MQTT_CERT")]
    pub mqtt_cert: Option<PathBuf>,
    /// PEM private key of --mqtt-cert.
    #[arg(long, env = "VIRGA_MQTT_KEY")]
    pub mqtt_key: Option<PathBuf>,
}

/// A secret from the environment variable `var`, else from the file `file` (its trailing
/// newline dropped).
fn secret(var: &str, file: Option<&Path>) -> Result<Option<String>> {
    if let Ok(v) = std::env::var(var) {
        return Ok(Some(v));
    }
    let Some(f) = file else { return Ok(None) };
    let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()))
}

fn user(
    name: &Option<String>,
    var: &str,
    file: Option<&Path>,
    what: &str,
) -> Result<Option<(String, String)>> {
    let Some(u) = name else { return Ok(None) };
    match secret(var, file)? {
        Some(p) => Ok(Some((u.clone(), p))),
        None => bail!("--{what}-user needs a password: set {var} or --{what}-password-file"),
    }
}

impl TriggerArgs {
    fn config(&self) -> Result<TriggersConfig> {
        let nats = match &self.nats_url {
            None => None,
            Some(url) => Some(NatsConfig {
                url: url.clone(),
                user: user(
                    &self.nats_user,
                    "VIRGA_NATS_PASSWORD",
                    self.nats_password_file.as_deref(),
                    "nats",
                )?,
                token: secret("VIRGA_NATS_TOKEN", self.nats_token_file.as_deref())?,
                creds_file: self.nats_creds.clone(),
                tls: TlsFiles {
                    ca: self.nats_ca.clone(),
                    cert: self.nats_cert.clone(),
                    key: self.nats_key.clone(),
                },
            }),
        };
        let mqtt = match &self.mqtt_url {
            None => None,
            Some(url) => Some(MqttConfig {
                url: url.clone(),
                client_id: self.mqtt_client_id.clone(),
                user: user(
                    &self.mqtt_user,
                    "VIRGA_MQTT_PASSWORD",
                    self.mqtt_password_file.as_deref(),
                    "mqtt",
                )?,
                v5: self.mqtt_version == "5",
                tls: TlsFiles {
                    ca: self.mqtt_ca.clone(),
                    cert: self.mqtt_cert.clone(),
                    key: self.mqtt_key.clone(),
                },
            }),
        };
        Ok(TriggersConfig { nats, mqtt })
    }

    /// Where each broker is, for the start-up summary (no credentials).
    pub fn describe(&self, on: &[&str]) -> String {
        on.iter()
            .map(|c| match *c {
                "nats" => format!("nats ({})", self.nats_url.as_deref().unwrap_or_default()),
                "mqtt" => format!(
                    "mqtt ({}, MQTT {})",
                    self.mqtt_url.as_deref().unwrap_or_default(),
                    self.mqtt_version
                ),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Start the connectors on `state`; the names of those that are on.
pub async fn start(state: &Arc<AppState>, args: &TriggerArgs) -> Result<Vec<&'static str>> {
    let cfg = args.config()?;
    virga_gateway::enable_triggers(state, cfg)
        .await
        .context("start the event connectors")
}
