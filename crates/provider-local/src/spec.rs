//! What an instance of a function runs: the watchdog environment (template defaults from the
//! bundle manifest, then the function's envVars, then envProcess), its working directory and
//! its secrets, written 0600 under the run directory.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use virga_store::Store;
use virga_types::{
    check_watchdog_env, parse_cpu, parse_memory, BundleManifest, BundleRef, FunctionDeployment,
    BUNDLE_MANIFEST,
};

/// Annotation that turns off a sandboxed function's outbound network access.
pub const OUTBOUND_ANNOTATION: &str = "virga.network.outbound";
/// Memory limit when a function gives none.
const DEFAULT_MEMORY: u64 = 256 << 20;
/// Process/thread limit of every sandbox.
const DEFAULT_PIDS: i64 = 128;
/// Size of every sandbox's private /tmp.
const TMP_SIZE: u64 = 64 << 20;

use crate::pool::PoolUse;
use crate::sandbox::Limits;
use crate::{ProviderConfig, ProviderError};

/// Everything needed to start instances of one function.
#[derive(Debug)]
pub struct InstanceSpec {
    /// Function name.
    pub name: String,
    /// Environment of the watchdog (and so of the function).
    pub env: BTreeMap<String, String>,
    /// Working directory: the unpacked bundle, or an empty home.
    pub workdir: PathBuf,
    /// Directory holding the function's secrets (one 0600 file each).
    pub secrets_dir: PathBuf,
    /// Sandbox limits (memory, CPU, pids, /tmp size).
    pub(crate) limits: Limits,
    /// Whether a sandboxed instance may reach beyond the host.
    pub(crate) outbound: bool,
    /// The last reason an instance failed, for error messages.
    pub(crate) last_failure: Mutex<String>,
    /// How the function can take a pre-started runtime from the warm pool, if it can.
    pub(crate) pool: Option<PoolUse>,
    /// A warm pool's generic runtime, not bound to any function yet.
    pub(crate) unbound: bool,
}

impl InstanceSpec {
    /// Resolve the bundle, write secrets and build the environment for `d`.
    pub fn prepare(
        cfg: &ProviderConfig,
        store: &Store,
        d: &FunctionDeployment,
    ) -> Result<InstanceSpec, ProviderError> {
        let name = d.service.clone();
        let fail = |reason: String| ProviderError::Prepare {
            name: name.clone(),
            reason,
        };
        let fn_dir = cfg.run_dir.join(&name);
        let mut env = BTreeMap::new();
        let mut lang = String::new();
        let workdir = match BundleRef::parse(&d.image) {
            Some(r) => {
                let dir = store.bundles().path(&r.digest).ok_or_else(|| {
                    fail(format!(
                        "bundle sha256:{} is not uploaded; run `virga deploy` again",
                        r.digest
                    ))
                })?;
                let manifest = read_manifest(&dir).map_err(fail)?;
                env.extend(manifest.env);
                lang = manifest.lang;
                dir
            }
            None => {
                // Only envProcess: a classic function run per request, from an empty home.
                env.insert("mode".into(), "serializing".into());
                let home = fn_dir.join("home");
                mkdir_private(&home).map_err(|e| fail(format!("create home: {e}")))?;
                home
            }
        };
        let template_env = env.clone();
        env.extend(d.env_vars.clone());
        if !d.env_process.is_empty() {
            env.insert("fprocess".into(), d.env_process.clone());
        }
        if !env.contains_key("fprocess") {
            return Err(fail(
                "no fprocess: the bundle names none and envProcess is empty".into(),
            ));
        }
        let secrets_dir = fn_dir.join("secrets");
        write_secrets(store, &secrets_dir, &d.secrets).map_err(fail)?;
        if cfg.sandbox.is_some() {
            crate::sandbox::hand_over_secrets(&secrets_dir).map_err(fail)?;
        }
        env.insert(
            "secret_mount_path".into(),
            secrets_dir.to_string_lossy().into_owned(),
        );
        let limits = limits(d).map_err(fail)?;
        let outbound = d
            .annotations
            .as_ref()
            .and_then(|a| a.get(OUTBOUND_ANNOTATION))
            .is_none_or(|v| v != "false");
        let mut bind_env = d.env_vars.clone();
        bind_env.insert("secret_mount_path".into(), env["secret_mount_path"].clone());
        let pool = (d.env_process.is_empty() && outbound)
            .then(|| {
                PoolUse::new(&lang, &workdir, &template_env, &bind_env, |name, env| {
                    InstanceSpec {
                        name,
                        env,
                        workdir: workdir.clone(),
                        secrets_dir: secrets_dir.clone(),
                        limits: Limits {
                            memory: DEFAULT_MEMORY,
                            cpu: None,
                            pids: DEFAULT_PIDS,
                            tmp: TMP_SIZE,
                        },
                        outbound: true,
                        last_failure: Mutex::new(String::new()),
                        pool: None,
                        unbound: true,
                    }
                })
            })
            .flatten();
        Ok(InstanceSpec {
            name,
            env,
            workdir,
            secrets_dir,
            limits,
            outbound,
            last_failure: Mutex::new(String::new()),
            pool,
            unbound: false,
        })
    }

    pub(crate) fn record_failure(&self, why: String) {
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    pub(crate) fn describe_failure(&self) -> String {
        let last = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_empty() {
            "instances are still starting".to_string()
        } else {
            format!("last instance failure: {last}")
        }
    }
}

/// Largest `virga-bundle.json` read.
const MANIFEST_LIMIT: u64 = 1 << 20;

/// The bundle's manifest, read without leaving the bundle (no symlinks, regular files only,
/// bounded: the gateway is root and the bundle is the uploader's). Errors never quote the
/// file, whose content is not the caller's to see.
fn read_manifest(dir: &Path) -> Result<BundleManifest, String> {
    let bytes = virga_store::read_beneath(dir, BUNDLE_MANIFEST, MANIFEST_LIMIT)
        .map_err(|e| format!("cannot read the bundle's {BUNDLE_MANIFEST}: {e}"))?;
    let Some(bytes) = bytes else {
        return Ok(BundleManifest::default());
    };
    let manifest: BundleManifest = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "the bundle's {BUNDLE_MANIFEST} is not a manifest (JSON {:?} error at line {} \
             column {}): it must be an object like {{\"lang\": \"...\", \"env\": {{...}}}}",
            e.classify(),
            e.line(),
            e.column()
        )
    })?;
    check_watchdog_env("env", &manifest.env).map_err(|e| {
        format!(
            "the bundle's {BUNDLE_MANIFEST} sets an invalid {}: fix it in the template and \
             build again",
            e.field
        )
    })?;
    Ok(manifest)
}

fn limits(d: &FunctionDeployment) -> Result<Limits, String> {
    let l = d.limits.clone().unwrap_or_default();
    let memory = match l.memory.as_str() {
        "" => DEFAULT_MEMORY,
        m => parse_memory(m).map_err(|e| format!("limits.memory: {e}"))?,
    };
    let cpu = match l.cpu.as_str() {
        "" => None,
        c => Some(parse_cpu(c).map_err(|e| format!("limits.cpu: {e}"))?),
    };
    Ok(Limits {
        memory,
        cpu,
        pids: DEFAULT_PIDS,
        tmp: TMP_SIZE,
    })
}

fn mkdir_private(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Write each listed secret to `dir/NAME` with mode 0600; a missing secret is an error.
fn write_secrets(store: &Store, dir: &Path, names: &[String]) -> Result<(), String> {
    let _ = fs::remove_dir_all(dir);
    mkdir_private(dir).map_err(|e| format!("create secrets dir: {e}"))?;
    for name in names {
        let value = store
            .secret(name)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("secret {name:?} does not exist: create it first"))?;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(dir.join(name))
            .map_err(|e| format!("write secret {name}: {e}"))?;
        f.write_all(&value)
            .map_err(|e| format!("write secret {name}: {e}"))?;
    }
    Ok(())
}

/// Remove a function's runtime files.
pub(crate) fn remove_files(cfg: &ProviderConfig, name: &str) {
    let _ = fs::remove_dir_all(cfg.run_dir.join(name));
}
