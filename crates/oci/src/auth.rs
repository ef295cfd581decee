//! Registry credentials: OpenFaaS's `registryAuth` (base64 `user:password`, what
//! `faas-cli deploy --send-registry-auth` sends) and Docker's `config.json` (`auths` with
//! `auth` entries, what `docker login` and `faas-cli registry-login` write). Credentials are
//! never printed: their `Debug` shows the user name only.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::{OciError, Result};

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or token.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({:?}, password hidden)", self.username)
    }
}

impl Credentials {
    /// Parse base64 `user:password` (the `registryAuth` field of a deployment, or an `auth`
    /// entry of `config.json`). The message never quotes the value.
    pub fn from_base64(value: &str) -> Result<Credentials> {
        let bad = |why: &str| OciError::BadInput(format!("registry credentials {why}"));
        let bytes = STANDARD
            .decode(value.trim())
            .map_err(|_| bad("are not valid base64 (expected base64 of user:password)"))?;
        let text = String::from_utf8(bytes).map_err(|_| bad("are not UTF-8"))?;
        let (user, pass) = text
            .split_once(':')
            .ok_or_else(|| bad("have no ':' (expected base64 of user:password)"))?;
        if user.is_empty() {
            return Err(bad("have an empty user name"));
        }
        Ok(Credentials {
            username: user.to_string(),
            password: pass.to_string(),
        })
    }

    /// The base64 `user:password` form.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(format!("{}:{}", self.username, self.password))
    }

    pub(crate) fn to_registry_auth(
        creds: Option<&Credentials>,
    ) -> oci_client::secrets::RegistryAuth {
        match creds {
            Some(c) => {
                oci_client::secrets::RegistryAuth::Basic(c.username.clone(), c.password.clone())
            }
            None => oci_client::secrets::RegistryAuth::Anonymous,
        }
    }
}

/// One `auths` entry of `config.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct AuthEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    password: Option<String>,
}

/// A Docker-style `config.json`: the `auths` map, other keys kept as they are.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RegistryConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

impl RegistryConfig {
    /// Read `path`; a missing file is an empty config. Entries are not decoded until used.
    pub fn load(path: &Path) -> Result<RegistryConfig> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(OciError::io(format!("read {}", path.display()))(e)),
        };
        // The position, never the content: the file holds passwords.
        serde_json::from_slice(&bytes).map_err(|e| {
            OciError::BadInput(format!(
                "{} is not a Docker config.json (line {}, column {})",
                path.display(),
                e.line(),
                e.column()
            ))
        })
    }

    /// The credentials stored for `registry` (a host as in an image reference; Docker Hub's
    /// names and `https://` keys match too), if any.
    pub fn lookup(&self, registry: &str) -> Result<Option<Credentials>> {
        let want = normalize_host(registry);
        let Some((key, entry)) = self.auths.iter().find(|(k, _)| normalize_host(k) == want) else {
            return Ok(None);
        };
        if let Some(auth) = &entry.auth {
            return Credentials::from_base64(auth).map(Some).map_err(|_| {
                OciError::BadInput(format!(
                    "the config.json entry for {key} has an invalid auth value"
                ))
            });
        }
        match (&entry.username, &entry.password) {
            (Some(u), Some(p)) => Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            })),
            _ => Ok(None),
        }
    }

    /// Store `creds` for `registry` (as `docker login` does), replacing an older entry.
    pub fn set(&mut self, registry: &str, creds: &Credentials) {
        let want = normalize_host(registry);
        self.auths.retain(|k, _| normalize_host(k) != want);
        self.auths.insert(
            registry.to_string(),
            AuthEntry {
                auth: Some(creds.to_base64()),
                ..AuthEntry::default()
            },
        );
    }

    /// Write the config to `path` atomically, mode 0600 (it holds passwords).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| OciError::BadInput(format!("cannot encode config.json: {e}")))?;
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let ctx = || format!("write {}", path.display());
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(OciError::io(ctx()))?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(OciError::io(ctx()))?;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .and_then(|()| f.write_all(&bytes))
            .and_then(|()| f.sync_all())
            .map_err(OciError::io(ctx()))?;
        fs::rename(&tmp, path).map_err(OciError::io(ctx()))
    }
}

/// The registry host a key or reference names: no scheme, no path, Docker Hub's aliases as one.
pub(crate) fn normalize_host(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_auth_and_config_json_without_quoting_secrets() {
        let c = Credentials::from_base64(&STANDARD.encode("ada:s3cr:et")).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("ada", "s3cr:et")
        );
        assert!(!format!("{c:?}").contains("s3cr"));
        for bad in ["%%%", &STANDARD.encode("nocolon"), &STANDARD.encode(":pw")] {
            let e = Credentials::from_base64(bad).unwrap_err().to_string();
            assert!(e.contains("registry credentials"), "{e}");
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let json = format!(
            r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}},"127.0.0.1:5000":{{"username":"u","password":"p"}}}},"credsStore":"x"}}"#,
            STANDARD.encode("hub:pw")
        );
        fs::write(&path, json).unwrap();
        let mut cfg = RegistryConfig::load(&path).unwrap();
        assert_eq!(cfg.lookup("docker.io").unwrap().unwrap().username, "hub");
        assert_eq!(cfg.lookup("127.0.0.1:5000").unwrap().unwrap().password, "p");
        assert!(cfg.lookup("ghcr.io").unwrap().is_none());
        cfg.set(
            "http://127.0.0.1:5000",
            &Credentials {
                username: "v".into(),
                password: "q".into(),
            },
        );
        cfg.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = RegistryConfig::load(&path).unwrap();
        assert_eq!(
            again.lookup("127.0.0.1:5000").unwrap().unwrap().username,
            "v"
        );
        assert!(fs::read_to_string(&path).unwrap().contains("credsStore"));

        fs::write(&path, r#"{"auths": {"h": {"auth": "c2VjcmV0"}}, oops"#).unwrap();
        let e = RegistryConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("line 1") && !e.contains("c2VjcmV0"), "{e}");
    }
}
