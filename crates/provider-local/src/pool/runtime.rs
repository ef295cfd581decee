//! The template runtimes a warm pool pre-starts, and which functions may take one.
//!
//! A pooled runtime runs from the platform's own copy of its template (written under the run
//! directory at start, from the templates compiled into `virga`), never from a function's
//! bundle: so nothing a function ships (a handler, a module shadowing the standard library)
//! is ever loaded into a runtime another function will be bound to. A function may take a
//! pooled runtime only when its bundle was built from that very template: same template name,
//! same watchdog environment, and byte-identical runtime files; anything else starts cold from
//! its own bundle, exactly as it was built.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use crate::config::PoolRuntime;
use crate::spec::{BundleTemplate, InstanceSpec};

/// Templates whose runtime can start unbound (`VIRGA_POOL=1`) and be bound later, with the
/// watchdog mode they must have: the http runtimes load the function's code at bind; in
/// Lambda mode the watchdog starts the runtime only then.
pub(crate) const BINDABLE: [(&str, &str); 4] = [
    ("python3-http", "http"),
    ("node20", "http"),
    ("python3-lambda", "lambda"),
    ("node-lambda", "lambda"),
];

/// Largest runtime file compared against a bundle's copy.
const MAX_RUNTIME_FILE: u64 = 1 << 20;

/// Which generic runtime a function can be bound to: `{lang}-{hash of its files and env}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey(pub(crate) String);

/// One runtime as installed by the platform.
#[derive(Debug)]
pub(crate) struct Installed {
    pub(crate) key: PoolKey,
    pub(crate) runtime: PoolRuntime,
    /// The spec pooled instances of this runtime start from: the platform's copy of the
    /// template, its env plus `VIRGA_POOL=1`, no code, no secrets.
    pub(crate) generic: Arc<InstanceSpec>,
}

/// What a function needs from the pool: its runtime and what to bind it with.
#[derive(Debug, Clone)]
pub(crate) struct PoolUse {
    pub(crate) runtime: Arc<Installed>,
    /// The function's own environment, applied at bind.
    pub(crate) env: BTreeMap<String, String>,
}

impl PoolUse {
    pub(crate) fn key(&self) -> &PoolKey {
        &self.runtime.key
    }
}

/// Write every bindable runtime's files under `dir/KEY/` (read-only for everyone but the
/// platform) and build its generic spec.
pub(crate) fn install(dir: &Path, runtimes: &[PoolRuntime]) -> Result<Vec<Arc<Installed>>, String> {
    let mut out = Vec::new();
    for rt in runtimes.iter().filter(|r| bindable(r)) {
        let key = key_of(rt);
        let root = dir.join(&key.0);
        for (rel, contents) in &rt.files {
            let rel = Path::new(rel);
            if rel.is_absolute() || rel.components().any(|c| c.as_os_str() == "..") {
                return Err(format!(
                    "runtime {}: bad file path {}",
                    rt.lang,
                    rel.display()
                ));
            }
            let path = root.join(rel);
            if let Some(parent) = path.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(|e| format!("create {}: {e}", parent.display()))?;
            }
            fs::write(&path, contents).map_err(|e| format!("write {}: {e}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
                .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        }
        let mut env = rt.env.clone();
        env.insert("VIRGA_POOL".into(), "1".into());
        let generic = InstanceSpec::generic(format!("pool-{}", key.0), env, root, dir.join("none"));
        out.push(Arc::new(Installed {
            key,
            runtime: rt.clone(),
            generic: Arc::new(generic),
        }));
    }
    Ok(out)
}

fn bindable(rt: &PoolRuntime) -> bool {
    let mode = rt.env.get("mode").map(String::as_str).unwrap_or_default();
    BINDABLE.contains(&(rt.lang.as_str(), mode))
}

/// The pool use of a function built from `template` into the bundle at `dir`, whose own
/// environment is `env`, or `None` when it must start cold from its bundle.
pub(crate) fn use_for(
    installed: &[Arc<Installed>],
    template: &BundleTemplate,
    dir: &Path,
    env: &BTreeMap<String, String>,
) -> Option<PoolUse> {
    if env
        .keys()
        .any(|k| virga_watchdog::config::ENV_KEYS.contains(&k.as_str()))
    {
        return None;
    }
    let rt = installed
        .iter()
        .find(|i| i.runtime.lang == template.lang && i.runtime.env == template.env)?;
    let same_files = rt.runtime.files.iter().all(|(rel, contents)| {
        let rel = rel.to_string_lossy();
        matches!(virga_store::read_beneath(dir, &rel, MAX_RUNTIME_FILE), Ok(Some(b)) if &b == contents)
    });
    (same_files && only_built_entries(dir, &rt.runtime)).then(|| PoolUse {
        runtime: rt.clone(),
        env: env.clone(),
    })
}

/// Whether the bundle's top level holds only what `virga build` puts there from this
/// template: its runtime files, `function/`, `python/` (pip's target) and the manifest. A
/// bundle with more (a module next to the runtime's entrypoint, say) was built from a changed
/// template and must run its own way, from its own bundle.
fn only_built_entries(dir: &Path, rt: &PoolRuntime) -> bool {
    let top: Vec<String> = rt
        .files
        .iter()
        .filter_map(|(rel, _)| rel.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().all(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        top.contains(&name)
            || ["function", "python", virga_types::BUNDLE_MANIFEST].contains(&name.as_str())
    })
}

/// Same template name, files and watchdog settings: the same key.
fn key_of(rt: &PoolRuntime) -> PoolKey {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.write(rt.lang.as_bytes());
    let mut files: Vec<_> = rt.files.iter().collect();
    files.sort();
    for (rel, contents) in files {
        h.write(rel.to_string_lossy().as_bytes());
        h.write(contents);
    }
    for (k, v) in &rt.env {
        h.write(k.as_bytes());
        h.write(v.as_bytes());
    }
    PoolKey(format!("{}-{:08x}", rt.lang, h.0 as u32))
}

/// 64-bit FNV-1a: a stable, dependency-free hash for pool keys.
struct Fnv(u64);

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
