//! Quotas per namespace, set as its annotations: `virga.quota.functions` (how many
//! functions), `virga.quota.replicas` (instances in all) and `virga.quota.memory` (the sum of
//! the instances' memory limits, e.g. `512Mi`). Every function counts at least one replica,
//! since a call starts one even at zero, so a cold start never goes beyond the quota. Deploys
//! and scales beyond them are refused (403 naming the quota); the autoscaler and alerts stop
//! at them ([`replicas_allowed`]).

use std::collections::BTreeMap;

use virga_store::StoredFunction;
use virga_types::{parse_memory, FunctionDeployment, DEFAULT_MEMORY_LIMIT};

use crate::{ApiError, AppState};

/// Annotation: most functions in the namespace.
const FUNCTIONS: &str = "virga.quota.functions";
/// Annotation: most replicas over the namespace's functions.
const REPLICAS: &str = "virga.quota.replicas";
/// Annotation: most memory over the namespace's instances.
const MEMORY: &str = "virga.quota.memory";

/// The quotas of one namespace; `None` is no limit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Quota {
    functions: Option<u64>,
    replicas: Option<u64>,
    memory: Option<u64>,
}

fn count(annotations: &BTreeMap<String, String>, key: &str) -> Result<Option<u64>, ApiError> {
    annotations
        .get(key)
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "annotations.{key}: {v:?} is not a whole number (e.g. \"10\")"
                ))
            })
        })
        .transpose()
}

impl Quota {
    fn parse(annotations: &BTreeMap<String, String>) -> Result<Quota, ApiError> {
        let memory = annotations
            .get(MEMORY)
            .map(|v| {
                parse_memory(v)
                    .map_err(|e| ApiError::BadRequest(format!("annotations.{MEMORY}: {e}")))
            })
            .transpose()?;
        Ok(Quota {
            functions: count(annotations, FUNCTIONS)?,
            replicas: count(annotations, REPLICAS)?,
            memory,
        })
    }

    /// The quotas of namespace `ns` (none if unreadable: the deploy path reports store errors).
    fn of(state: &AppState, ns: &str) -> Quota {
        state
            .store
            .namespace(ns)
            .ok()
            .flatten()
            .and_then(|n| Quota::parse(&n.annotations).ok())
            .unwrap_or_default()
    }
}

/// 400 unless every quota annotation in `annotations` is well-formed.
pub(crate) fn check_annotations(annotations: &BTreeMap<String, String>) -> Result<(), ApiError> {
    Quota::parse(annotations).map(|_| ())
}

/// Memory limit of one instance of `d`.
fn memory_of(d: &FunctionDeployment) -> u64 {
    d.limits
        .as_ref()
        .and_then(|l| parse_memory(&l.memory).ok())
        .unwrap_or(DEFAULT_MEMORY_LIMIT)
}

/// What the namespace's functions other than `except` use: (functions, replicas, memory).
fn usage(state: &AppState, ns: &str, except: &str) -> Result<(u64, u64, u64), ApiError> {
    let mut used = (0, 0, 0);
    for f in state.store.functions()? {
        if f.deployment.namespace != ns || f.deployment.service == except {
            continue;
        }
        let replicas = state.provider.replicas(&f.key()).0.max(f.replicas).max(1);
        used.0 += 1;
        used.1 += replicas;
        used.2 += replicas.saturating_mul(memory_of(&f.deployment));
    }
    Ok(used)
}

fn over(ns: &str, what: &str, asked: String, limit: String) -> ApiError {
    ApiError::Forbidden(format!(
        "namespace {ns:?} quota {what} exceeded: this needs {asked}, the quota is {limit} \
         (raise the namespace's {what} annotation or remove something first)"
    ))
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(1 << 20))
}

/// 403 unless `d` (replacing `old`, if an update) with `replicas` fits its namespace's quotas.
pub(crate) fn check_deploy(
    state: &AppState,
    d: &FunctionDeployment,
    replicas: u64,
    old: Option<&StoredFunction>,
) -> Result<(), ApiError> {
    let quota = Quota::of(state, &d.namespace);
    if quota == Quota::default() {
        return Ok(());
    }
    let (functions, used_replicas, used_memory) = usage(state, &d.namespace, &d.service)?;
    let replicas = replicas.max(1);
    let ns = &d.namespace;
    if let Some(limit) = quota
        .functions
        .filter(|&l| old.is_none() && functions + 1 > l)
    {
        return Err(over(
            ns,
            FUNCTIONS,
            format!("{} functions", functions + 1),
            limit.to_string(),
        ));
    }
    if let Some(limit) = quota.replicas.filter(|&l| used_replicas + replicas > l) {
        let asked = format!("{} replicas", used_replicas + replicas);
        return Err(over(ns, REPLICAS, asked, limit.to_string()));
    }
    let need = used_memory + replicas.saturating_mul(memory_of(d));
    if let Some(limit) = quota.memory.filter(|&l| need > l) {
        return Err(over(ns, MEMORY, mib(need), mib(limit)));
    }
    Ok(())
}

/// 403 unless `f` may have `replicas`.
pub(crate) fn check_scale(
    state: &AppState,
    f: &StoredFunction,
    replicas: u64,
) -> Result<(), ApiError> {
    let allowed = replicas_allowed(state, f, replicas);
    if replicas <= allowed {
        return Ok(());
    }
    let quota = Quota::of(state, &f.deployment.namespace);
    let what = if quota.replicas.is_some() {
        REPLICAS
    } else {
        MEMORY
    };
    Err(ApiError::Forbidden(format!(
        "namespace {:?} quota {what} exceeded: function {:?} may have at most {allowed} \
         replicas now, not {replicas}",
        f.deployment.namespace, f.deployment.service
    )))
}

/// The most replicas `f` may have under its namespace's quotas, at most `wanted` (and never
/// less than one: a function may always serve).
pub(crate) fn replicas_allowed(state: &AppState, f: &StoredFunction, wanted: u64) -> u64 {
    let quota = Quota::of(state, &f.deployment.namespace);
    if quota.replicas.is_none() && quota.memory.is_none() {
        return wanted;
    }
    let Ok((_, used_replicas, used_memory)) =
        usage(state, &f.deployment.namespace, &f.deployment.service)
    else {
        return wanted;
    };
    let mut allowed = wanted;
    if let Some(limit) = quota.replicas {
        allowed = allowed.min(limit.saturating_sub(used_replicas));
    }
    if let Some(limit) = quota.memory {
        allowed = allowed.min(limit.saturating_sub(used_memory) / memory_of(&f.deployment).max(1));
    }
    allowed.max(1).min(wanted.max(1))
}

/// The most replicas the function keyed `key` may have, at most `wanted`: the autoscaler's cap.
pub fn cap(state: &AppState, key: &str, wanted: u64) -> u64 {
    match state.store.function(key) {
        Ok(Some(f)) => replicas_allowed(state, &f, wanted),
        _ => wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_annotations_are_checked() {
        let mut a = BTreeMap::new();
        a.insert(FUNCTIONS.to_string(), "3".to_string());
        a.insert(MEMORY.to_string(), "512Mi".to_string());
        let q = Quota::parse(&a).unwrap();
        assert_eq!((q.functions, q.memory), (Some(3), Some(512 << 20)));
        a.insert(REPLICAS.to_string(), "lots".to_string());
        let e = Quota::parse(&a).unwrap_err().to_string();
        assert!(e.contains(REPLICAS) && e.contains("whole number"), "{e}");
        a.insert(REPLICAS.to_string(), "2".to_string());
        a.insert(MEMORY.to_string(), "512 bananas".to_string());
        assert!(Quota::parse(&a).unwrap_err().to_string().contains(MEMORY));
    }
}
