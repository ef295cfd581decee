//! What an image says about running it (its config, parsed with oci-spec), the platform this
//! machine wants, and the overrides a build puts on top of a base image's config.

use std::collections::BTreeMap;

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

/// How to run an image: the fields of its config a runtime needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, `KEY=value` each.
    pub env: Vec<String>,
    /// `WorkingDir`, if set.
    pub working_dir: Option<String>,
    /// `User` (`name`, `uid`, `uid:gid`), if set.
    pub user: Option<String>,
    /// `ExposedPorts`, e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// The image's OS, e.g. `linux`.
    pub os: String,
    /// The image's architecture, e.g. `amd64`.
    pub architecture: String,
}

impl ImageConfig {
    /// The run fields of a parsed config.
    pub fn from_oci(c: &ImageConfiguration) -> ImageConfig {
        let cfg = c.config().clone().unwrap_or_default();
        let mut ports = cfg.exposed_ports().clone().unwrap_or_default();
        ports.sort();
        ImageConfig {
            entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
            cmd: cfg.cmd().clone().unwrap_or_default(),
            env: cfg.env().clone().unwrap_or_default(),
            working_dir: cfg.working_dir().clone().filter(|w| !w.is_empty()),
            user: cfg.user().clone().filter(|u| !u.is_empty()),
            exposed_ports: ports,
            labels: cfg
                .labels()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            os: c.os().to_string(),
            architecture: c.architecture().to_string(),
        }
    }
}

/// An OS and CPU architecture, as image indexes and configs name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
}

impl Platform {
    /// This machine's platform (`linux/amd64` on x86-64).
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)
    }
}

/// What a build sets on top of the base image's config: `Some`/non-empty fields replace or
/// extend the base's (`env` by variable name, `labels` by key, ports added).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    /// Replaces `Entrypoint` (and clears the base's `Cmd` unless `cmd` is set, as Docker does).
    pub entrypoint: Option<Vec<String>>,
    /// Replaces `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` pairs set over the base's.
    pub env: Vec<String>,
    /// Replaces `WorkingDir`.
    pub working_dir: Option<String>,
    /// Replaces `User`.
    pub user: Option<String>,
    /// Ports added, e.g. `8080/tcp`.
    pub exposed_ports: Vec<String>,
    /// Labels set over the base's.
    pub labels: BTreeMap<String, String>,
}

impl RunConfig {
    /// Apply to `c` (a base image's config, or an empty one).
    pub(crate) fn apply(&self, c: &mut oci_spec::image::Config) {
        if let Some(ep) = &self.entrypoint {
            c.set_entrypoint(Some(ep.clone()));
            if self.cmd.is_none() {
                c.set_cmd(None);
            }
        }
        if let Some(cmd) = &self.cmd {
            c.set_cmd(Some(cmd.clone()));
        }
        if !self.env.is_empty() {
            let mut env = c.env().clone().unwrap_or_default();
            for kv in &self.env {
                let key = kv.split('=').next().unwrap_or(kv);
                env.retain(|e| e.split('=').next() != Some(key));
                env.push(kv.clone());
            }
            c.set_env(Some(env));
        }
        if let Some(w) = &self.working_dir {
            c.set_working_dir(Some(w.clone()));
        }
        if let Some(u) = &self.user {
            c.set_user(Some(u.clone()));
        }
        if !self.exposed_ports.is_empty() {
            let mut ports = c.exposed_ports().clone().unwrap_or_default();
            ports.extend(self.exposed_ports.iter().cloned());
            ports.sort();
            ports.dedup();
            c.set_exposed_ports(Some(ports));
        }
        if !self.labels.is_empty() {
            let mut labels = c.labels().clone().unwrap_or_default();
            labels.extend(self.labels.clone());
            c.set_labels(Some(labels));
        }
    }
}
