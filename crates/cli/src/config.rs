//! Where the CLI talks to and as whom. The gateway URL comes from `--gateway`, then
//! `VIRGA_URL`, `OPENFAAS_URL`, the stack file's `provider.gateway` and finally
//! `http://127.0.0.1:8080`. Credentials (a password or an API token) are stored per gateway
//! by `virga login` in `~/.virga/config.json` (directory 0700, file 0600;
//! `VIRGA_CONFIG_DIR` moves it), and `VIRGA_TOKEN`, then `VIRGA_PASSWORD` /
//! `OPENFAAS_PASSWORD` in the environment win over the stored ones. With none, a loopback
//! gateway is tried with the password `virga up` wrote to its data directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Gateway used when nothing else names one.
pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

/// User name OpenFaaS and Virga use unless told otherwise.
pub const DEFAULT_USER: &str = "admin";

/// Basic-auth credentials for one gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// User name (`admin`).
    pub username: String,
    /// Password.
    pub password: String,
}

/// How the CLI signs in to a gateway.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// HTTP basic auth.
    Basic(Credentials),
    /// An API token, sent as `Authorization: Bearer`.
    Token(String),
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Basic(c) => write!(f, "Basic({})", c.username),
            Auth::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// The content of `config.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ConfigFile {
    /// Credentials keyed by normalised gateway URL.
    #[serde(default)]
    auths: BTreeMap<String, Credentials>,
    /// API tokens keyed by normalised gateway URL (a gateway has a token or credentials).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tokens: BTreeMap<String, String>,
}

/// Pick the gateway URL: flag, `VIRGA_URL`, `OPENFAAS_URL`, stack file, default.
pub fn resolve_gateway(flag: Option<&str>, stack_gateway: Option<&str>) -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let chosen = flag
        .map(str::to_string)
        .or_else(|| env("VIRGA_URL"))
        .or_else(|| env("OPENFAAS_URL"))
        .or_else(|| {
            stack_gateway
                .filter(|g| !g.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| DEFAULT_GATEWAY.to_string());
    normalise_gateway(&chosen)
}

/// `127.0.0.1:8080/` → `http://127.0.0.1:8080`: a scheme and no trailing slash.
pub fn normalise_gateway(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

/// The directory holding `config.json`.
pub fn config_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("VIRGA_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("cannot find the config directory: set HOME or VIRGA_CONFIG_DIR")?;
    Ok(PathBuf::from(home).join(".virga"))
}

fn config_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("config.json"))
}

fn read_config() -> Result<ConfigFile> {
    let path = config_path()?;
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not valid: fix or delete it, then run `virga login`",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn write_config(config: &ConfigFile) -> Result<PathBuf> {
    let dir = config_dir()?;
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    set_mode(&dir, 0o700)?;
    let path = dir.join("config.json");
    let tmp = dir.join(".config.json.tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut file = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    set_mode(&tmp, 0o600)?;
    file.write_all(&serde_json::to_vec_pretty(config)?)?;
    file.sync_all()?;
    fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

fn set_mode(path: &std::path::Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set permissions of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// How to sign in to `gateway`: `VIRGA_TOKEN`, then a password from the environment, then
/// what `virga login` stored.
pub fn auth_for(gateway: &str) -> Result<Option<Auth>> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    if let Some(token) = env("VIRGA_TOKEN") {
        return Ok(Some(Auth::Token(token.trim().to_string())));
    }
    let config = read_config()?;
    let gateway = normalise_gateway(gateway);
    let stored = config.auths.get(&gateway).cloned();
    let env_password = env("VIRGA_PASSWORD").or_else(|| env("OPENFAAS_PASSWORD"));
    let env_user = env("VIRGA_USERNAME").or_else(|| env("OPENFAAS_USERNAME"));
    if env_password.is_none() {
        if let Some(token) = config.tokens.get(&gateway) {
            return Ok(Some(Auth::Token(token.clone())));
        }
    }
    Ok(match (env_password, stored) {
        (Some(password), stored) => Some(Credentials {
            username: env_user
                .or_else(|| stored.map(|s| s.username))
                .unwrap_or_else(|| DEFAULT_USER.to_string()),
            password,
        }),
        (None, Some(stored)) => Some(stored),
        (None, None) => local_admin_password(&gateway).map(|password| Credentials {
            username: DEFAULT_USER.to_string(),
            password,
        }),
    }
    .map(Auth::Basic))
}

/// For a loopback gateway with nothing stored: the password `virga up` generated in its
/// data directory (`$VIRGA_DATA_DIR` or `./.virga`), if this user can read it.
fn local_admin_password(gateway: &str) -> Option<String> {
    let url = reqwest::Url::parse(&normalise_gateway(gateway)).ok()?;
    if !matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")) {
        return None;
    }
    let dir = std::env::var_os("VIRGA_DATA_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".virga"));
    let password = fs::read_to_string(dir.join("admin-password")).ok()?;
    Some(password.trim().to_string()).filter(|p| !p.is_empty())
}

/// Store credentials for `gateway` (in place of a token); returns the file written.
pub fn save_credentials(gateway: &str, creds: &Credentials) -> Result<PathBuf> {
    let mut config = read_config()?;
    let gateway = normalise_gateway(gateway);
    config.tokens.remove(&gateway);
    config.auths.insert(gateway, creds.clone());
    write_config(&config)
}

/// Store an API token for `gateway` (in place of credentials); returns the file written.
pub fn save_token(gateway: &str, token: &str) -> Result<PathBuf> {
    let mut config = read_config()?;
    let gateway = normalise_gateway(gateway);
    config.auths.remove(&gateway);
    config.tokens.insert(gateway, token.to_string());
    write_config(&config)
}

/// Forget the credentials or token of `gateway`; false when none were stored.
pub fn remove_credentials(gateway: &str) -> Result<bool> {
    let mut config = read_config()?;
    let gateway = normalise_gateway(gateway);
    let removed = config.tokens.remove(&gateway).is_some();
    let removed = config.auths.remove(&gateway).is_some() || removed;
    if removed {
        write_config(&config)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_gateway_urls() {
        assert_eq!(
            normalise_gateway("127.0.0.1:8080/"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(normalise_gateway("http://gw:31112"), "http://gw:31112");
    }

    #[test]
    fn stores_credentials_privately() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("cfg");
        // Tests in this module are the only ones touching VIRGA_CONFIG_DIR.
        std::env::set_var("VIRGA_CONFIG_DIR", &cfg);
        let creds = Credentials {
            username: "admin".into(),
            password: "pw".into(),
        };
        let path = save_credentials("http://gw:1/", &creds).unwrap();
        let from_env = ["VIRGA_TOKEN", "VIRGA_PASSWORD", "OPENFAAS_PASSWORD"]
            .iter()
            .any(|k| std::env::var_os(k).is_some());
        if !from_env {
            assert_eq!(
                auth_for("http://gw:1").unwrap(),
                Some(Auth::Basic(creds.clone()))
            );
        }
        // A token replaces the password, and a password the token.
        save_token("http://gw:1", "vg_t").unwrap();
        if !from_env {
            assert_eq!(
                auth_for("http://gw:1").unwrap(),
                Some(Auth::Token("vg_t".into()))
            );
        }
        save_credentials("http://gw:1/", &creds).unwrap();
        if !from_env {
            assert_eq!(auth_for("http://gw:1").unwrap(), Some(Auth::Basic(creds)));
        }
        save_token("http://gw:1", "vg_t").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(&cfg), 0o700);
        }
        assert!(remove_credentials("http://gw:1").unwrap());
        assert!(!remove_credentials("http://gw:1").unwrap());
    }
}
