//! What an instance of a function runs: the watchdog environment (template defaults from the
//! bundle manifest, then the function's envVars, then envProcess), its working directory, its
//! limits and its secrets, written 0600 to the secrets tmpfs (never into the data
//! directory). Prepared once per
//! deployment, for instances that see their files as their isolation's [`View`] says.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use virga_oci::Images;
use virga_store::Store;
use virga_types::{
    check_watchdog_env, function_key, namespace_or_default, parse_cpu, parse_memory,
    BundleManifest, BundleRef, ConnectionLimits, FunctionDeployment, BUNDLE_MANIFEST,
    DEFAULT_DRAIN_GRACE, DEFAULT_MEMORY_LIMIT,
};

/// Annotation that turns off a sandboxed function's outbound network access.
pub const OUTBOUND_ANNOTATION: &str = "virga.network.outbound";
/// Process/thread limit of every sandbox.
const DEFAULT_PIDS: i64 = 128;
/// Size of every sandbox's private /tmp.
const TMP_SIZE: u64 = 64 << 20;

use virga_provider::ProviderError;

use crate::image::{self, ImageRoot};

/// Numbers of function secrets directories, unique for the platform's life.
static NEXT_SECRETS: AtomicU64 = AtomicU64::new(1);

/// How an isolation's instances see their function's files.
pub(crate) struct View {
    /// Where the code directory appears to the instance (`None`: at its host path).
    pub(crate) code: Option<&'static str>,
    /// The user that must own the secrets to read them (`None`: the platform's own).
    pub(crate) secrets_owner: Option<u32>,
}

/// Resource limits of one instance.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Memory in bytes (also the memory+swap limit, so it cannot swap).
    pub(crate) memory: u64,
    /// CPU cores, if given (else the isolation's default).
    pub(crate) cpu: Option<f64>,
    /// Most processes and threads.
    pub(crate) pids: i64,
    /// Size of the private /tmp in bytes.
    pub(crate) tmp: u64,
}

/// Everything needed to start instances of one function.
#[derive(Debug)]
pub(crate) struct InstanceSpec {
    /// Function name.
    pub(crate) name: String,
    /// Environment of the watchdog (and so of the function).
    pub(crate) env: BTreeMap<String, String>,
    /// Working directory: the unpacked bundle, or an empty home.
    pub(crate) workdir: PathBuf,
    /// Directory holding the function's secrets (one 0600 file each).
    pub(crate) secrets_dir: PathBuf,
    /// Limits (memory, CPU, pids, /tmp size), where the isolation enforces them.
    pub(crate) limits: Limits,
    /// Whether a sandboxed instance may reach beyond the host.
    pub(crate) outbound: bool,
    /// How long a removed instance waits for its requests and upgraded connections to end
    /// (`virga.connection.drain-grace`).
    pub(crate) drain_grace: Duration,
    /// The last reason an instance failed, for error messages.
    pub(crate) last_failure: Mutex<String>,
    /// The template the bundle was built from, when the function runs it unchanged (no
    /// envProcess of its own): what the warm pool checks before it binds a runtime.
    pub(crate) template: Option<BundleTemplate>,
    /// The function's own environment (envVars and `secret_mount_path`), applied when a
    /// pooled runtime is bound to it.
    pub(crate) bind_env: BTreeMap<String, String>,
    /// A warm pool's generic runtime, not bound to any function yet.
    pub(crate) unbound: bool,
    /// What its root filesystem is.
    pub(crate) rootfs: Rootfs,
}

/// An instance's root filesystem.
#[derive(Debug)]
pub(crate) enum Rootfs {
    /// The isolation's own (the host's /usr in a sandbox), with the watchdog as init.
    Host,
    /// A registry image's layers, with the image's own process as init.
    Image(ImageRoot),
}

/// What a bundle's manifest says it was built from.
#[derive(Debug, Clone)]
pub(crate) struct BundleTemplate {
    /// Template name.
    pub(crate) lang: String,
    /// The template's watchdog environment.
    pub(crate) env: BTreeMap<String, String>,
}

impl InstanceSpec {
    /// Resolve the bundle (or the image, in `images`), write secrets (under `secrets_root`,
    /// a tmpfs outside the data directory) and build the environment for `d`, for instances
    /// that see their files as `view` says.
    pub(crate) fn prepare(
        run_dir: &Path,
        secrets_root: &Path,
        view: &View,
        store: &Store,
        images: Option<&Images>,
        d: &FunctionDeployment,
    ) -> Result<InstanceSpec, ProviderError> {
        // The platform-wide key: two namespaces may each have a function of one name.
        let name = function_key(&d.service, &d.namespace);
        let fail = |reason: String| ProviderError::Prepare {
            name: name.clone(),
            reason,
        };
        let fn_dir = run_dir.join(&name);
        let Code {
            workdir,
            mut env,
            template,
            rootfs,
        } = code(store, images, d, &fn_dir).map_err(&fail)?;
        // Packages `virga build` installed into python/ are importable by any entrypoint (a
        // real OpenFaaS template's index.py does not add that directory itself).
        if fs::symlink_metadata(workdir.join("python")).is_ok_and(|m| m.is_dir()) {
            let code = view.code.map_or(workdir.as_path(), Path::new);
            env.insert(
                "PYTHONPATH".into(),
                code.join("python").to_string_lossy().into_owned(),
            );
        }
        env.extend(d.env_vars.clone());
        if !d.env_process.is_empty() {
            env.insert("fprocess".into(), d.env_process.clone());
        }
        if matches!(rootfs, Rootfs::Host) && !env.contains_key("fprocess") {
            return Err(fail(
                "no fprocess: the bundle names none and envProcess is empty".into(),
            ));
        }
        let limits = limits(d).map_err(&fail)?;

        // An image's user reads its secrets (as root without capabilities too).
        let owner = match &rootfs {
            Rootfs::Host => view.secrets_owner,
            Rootfs::Image(root) => view.secrets_owner.map(|_| root.uid),
        };
        let secrets_dir = secrets(store, secrets_root, &name, d, owner).map_err(&fail)?;
        let secret_mount_path = secrets_dir.to_string_lossy().into_owned();
        env.insert("secret_mount_path".into(), secret_mount_path.clone());
        let mut bind_env = d.env_vars.clone();
        bind_env.insert("secret_mount_path".into(), secret_mount_path);
        if env
            .get("mode")
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("lambda"))
        {
            // What a Lambda runtime reads of its function (also given at a pooled instance's
            // bind, since its watchdog started before the function was known); the
            // function's own values win.
            for (k, v) in [
                ("AWS_LAMBDA_FUNCTION_NAME", name.clone()),
                (
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                    limits.memory.div_ceil(1 << 20).to_string(),
                ),
            ] {
                env.entry(k.into()).or_insert_with(|| v.clone());
                bind_env.entry(k.into()).or_insert(v);
            }
        }
        let outbound = d
            .annotations
            .as_ref()
            .and_then(|a| a.get(OUTBOUND_ANNOTATION))
            .is_none_or(|v| v != "false");
        // Checked at deploy; a definition stored before the check existed gets the default.
        let drain_grace = ConnectionLimits::from_annotations(d.annotations.as_ref())
            .unwrap_or_default()
            .drain_grace;
        Ok(InstanceSpec {
            name,
            env,
            workdir,
            secrets_dir,
            limits,
            outbound,
            drain_grace,
            last_failure: Mutex::new(String::new()),
            template,
            bind_env,
            unbound: false,
            rootfs,
        })
    }

    /// The spec of a warm pool's generic runtime: `env` from `workdir` (the platform's copy
    /// of the template), no secrets (`no_secrets` is an empty directory), default limits.
    pub(crate) fn generic(
        name: String,
        env: BTreeMap<String, String>,
        workdir: PathBuf,
        no_secrets: PathBuf,
    ) -> InstanceSpec {
        InstanceSpec {
            name,
            env,
            workdir,
            secrets_dir: no_secrets,
            limits: Limits {
                memory: DEFAULT_MEMORY_LIMIT,
                cpu: None,
                pids: DEFAULT_PIDS,
                tmp: TMP_SIZE,
            },
            outbound: true,
            drain_grace: DEFAULT_DRAIN_GRACE,
            last_failure: Mutex::new(String::new()),
            template: None,
            bind_env: BTreeMap::new(),
            unbound: true,
            rootfs: Rootfs::Host,
        }
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

/// A function's code: its working directory and the environment its bundle's manifest sets.
struct Code {
    workdir: PathBuf,
    env: BTreeMap<String, String>,
    /// The template, when the function runs it unchanged (no envProcess of its own).
    template: Option<BundleTemplate>,
    rootfs: Rootfs,
}

/// The code of `d`: its unpacked bundle, its registry image (in `images`), or for a
/// function of only an envProcess an empty home under `fn_dir`.
fn code(
    store: &Store,
    images: Option<&Images>,
    d: &FunctionDeployment,
    fn_dir: &Path,
) -> Result<Code, String> {
    if let Some(digest) = image::pinned_digest(&d.image) {
        let (root, env) = image::root_of(images, d, &digest?)?;
        return Ok(Code {
            workdir: fn_dir.to_path_buf(),
            env,
            template: None,
            rootfs: Rootfs::Image(root),
        });
    }
    let Some(r) = BundleRef::parse(&d.image) else {
        // Only envProcess: a classic function run per request, from an empty home it can
        // list (as /home/app in an OpenFaaS image).
        let home = fn_dir.join("home");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&home)
            .map_err(|e| format!("create home: {e}"))?;
        return Ok(Code {
            workdir: home,
            env: BTreeMap::from([("mode".into(), "serializing".into())]),
            template: None,
            rootfs: Rootfs::Host,
        });
    };
    let dir = store.bundles().path(&r.digest).ok_or_else(|| {
        format!(
            "bundle sha256:{} is not uploaded; run `virga deploy` again",
            r.digest
        )
    })?;
    let manifest = read_manifest(&dir)?;
    Ok(Code {
        workdir: dir,
        env: manifest.env.clone(),
        template: d.env_process.is_empty().then_some(BundleTemplate {
            lang: manifest.lang,
            env: manifest.env,
        }),
        rootfs: Rootfs::Host,
    })
}

/// Write the secrets `d` lists into a directory of this definition's own under `fn_dir`
/// (the instances of the one it replaces keep theirs until they are gone, and keep them
/// whole if this one fails to prepare), owned by `owner` if given.
fn secrets(
    store: &Store,
    root: &Path,
    function: &str,
    d: &FunctionDeployment,
    owner: Option<u32>,
) -> Result<PathBuf, String> {
    let generation = NEXT_SECRETS.fetch_add(1, Ordering::Relaxed);
    let dir = root.join(format!("{generation}-{function}"));
    let written = write_secrets(store, &dir, d).and_then(|()| match owner {
        Some(uid) => hand_over_secrets(&dir, uid),
        None => Ok(()),
    });
    if let Err(e) = written {
        let _ = fs::remove_dir_all(&dir);
        return Err(e);
    }
    Ok(dir)
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
        "" => DEFAULT_MEMORY_LIMIT,
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

/// Write each secret `d` lists to `dir/NAME` with mode 0600; a missing secret is an error.
/// Only secrets of the function's own namespace can be named.
fn write_secrets(store: &Store, dir: &Path, d: &FunctionDeployment) -> Result<(), String> {
    let _ = fs::remove_dir_all(dir);
    mkdir_private(dir).map_err(|e| format!("create secrets dir: {e}"))?;
    for name in &d.secrets {
        let value = store
            .secret(&function_key(name, &d.namespace))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| {
                format!(
                    "secret {name:?} does not exist in namespace {:?}: create it there first",
                    namespace_or_default(&d.namespace)
                )
            })?;
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

/// Give user `uid` read access to a function's secrets (files 0600, dir 0700, owned by it).
fn hand_over_secrets(dir: &Path, uid: u32) -> Result<(), String> {
    let chown = |p: &Path| {
        std::os::unix::fs::chown(p, Some(uid), Some(uid))
            .map_err(|e| format!("chown {}: {e}", p.display()))
    };
    let chmod = |p: &Path, mode: u32| {
        fs::set_permissions(p, fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", p.display()))
    };
    let entries = fs::read_dir(dir).map_err(|e| format!("read secrets dir: {e}"))?;
    for e in entries.flatten() {
        chown(&e.path())?;
        chmod(&e.path(), 0o600)?;
    }
    chown(dir)?;
    chmod(dir, 0o700)
}

impl Drop for InstanceSpec {
    /// The secrets directory lives as long as the definition whose instances read it.
    fn drop(&mut self) {
        if !self.unbound {
            let _ = fs::remove_dir_all(&self.secrets_dir);
        }
    }
}

/// Remove a function's runtime files.
pub(crate) fn remove_files(run_dir: &Path, name: &str) {
    let _ = fs::remove_dir_all(run_dir.join(name));
}
