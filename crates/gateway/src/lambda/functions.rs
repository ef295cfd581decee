//! `ListFunctions` (`GET /2015-03-31/functions/`, paged with `Marker` and `MaxItems`),
//! `GetFunction` (`GET /2015-03-31/functions/{name}`) and `GetFunctionConfiguration`
//! (`.../{name}/configuration`) in Lambda's JSON shapes, for the
//! fields Virga has: a bundle's manifest environment counts for the handler and timeout, the
//! environment shown is the function's `envVars` only (never its secrets).

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::Json;
use serde::Deserialize;
use virga_store::StoredFunction;
use virga_types::lambda::{
    Environment, FunctionCode, FunctionConfiguration, GetFunctionResponse, ListFunctionsResponse,
};
use virga_types::BundleRef;

use super::{resolve, Caller, LambdaError};
use crate::{AppState, Need};

/// Functions per page unless `MaxItems` says otherwise (Lambda's default).
const DEFAULT_PAGE: usize = 50;
/// Most functions per page (Lambda's limit).
const MAX_PAGE: usize = 10_000;
/// Memory of a function without `limits.memory` (the local provider's default), MB.
const DEFAULT_MEMORY_MB: u64 = 256;
/// `exec_timeout` of a function that sets none (the watchdog's default), seconds.
const DEFAULT_TIMEOUT_S: u64 = 10;

/// `?Marker=&MaxItems=` of `ListFunctions`.
#[derive(Deserialize)]
pub(crate) struct ListQuery {
    #[serde(rename = "Marker")]
    marker: Option<String>,
    #[serde(rename = "MaxItems")]
    max_items: Option<String>,
}

/// `GET /2015-03-31/functions/`: one page of functions by name; `NextMarker` is the last
/// name of the page when more follow.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Query(q): Query<ListQuery>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<ListFunctionsResponse>, LambdaError> {
    let page = match q.max_items.as_deref() {
        None => DEFAULT_PAGE,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                LambdaError::invalid_parameter(format!(
                    "MaxItems {v:?} is not valid: give a whole number from 1 to {MAX_PAGE}"
                ))
            })?,
    };
    caller
        .who
        .check_role(Need::Read)
        .map_err(|e| LambdaError::access_denied(e.to_string()))?;
    let mut all = state.store.functions().map_err(crate::ApiError::from)?;
    all.retain(|f| caller.who.sees(&f.deployment.namespace));
    // Lambda names them by key: `name`, or `name.namespace` outside the default namespace.
    all.sort_by_key(StoredFunction::key);
    let after = q.marker.as_deref().unwrap_or("");
    let rest: Vec<&StoredFunction> = all.iter().filter(|f| f.key().as_str() > after).collect();
    let functions: Vec<FunctionConfiguration> = rest
        .iter()
        .take(page)
        .map(|f| configuration(&state, f, &caller))
        .collect();
    let next_marker = (rest.len() > page).then(|| rest[page - 1].key());
    Ok(Json(ListFunctionsResponse {
        functions,
        next_marker,
    }))
}

/// The stored function a `FunctionName` (and `?Qualifier=`) names.
fn find(
    state: &AppState,
    raw: &str,
    qualifier: Option<&str>,
    caller: &Caller,
) -> Result<StoredFunction, LambdaError> {
    let name = resolve(raw, qualifier, caller)?;
    caller.check(Need::Read, &name)?;
    state
        .store
        .function(&name)
        .map_err(crate::ApiError::from)?
        .ok_or_else(|| LambdaError::not_found(&caller.arn(&name)))
}

/// `GET /2015-03-31/functions/{name}/configuration`.
pub(crate) async fn get_configuration(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<super::invoke::InvokeQuery>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<FunctionConfiguration>, LambdaError> {
    let f = find(&state, &raw, q.qualifier.as_deref(), &caller)?;
    Ok(Json(configuration(&state, &f, &caller)))
}

/// `GET /2015-03-31/functions/{name}`.
pub(crate) async fn get_one(
    State(state): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<super::invoke::InvokeQuery>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<GetFunctionResponse>, LambdaError> {
    let f = find(&state, &raw, q.qualifier.as_deref(), &caller)?;
    let d = &f.deployment;
    let code = match (&f.image_ref, BundleRef::parse(&d.image)) {
        (Some(reference), _) => FunctionCode {
            repository_type: "Image".into(),
            image_uri: Some(reference.clone()),
            resolved_image_uri: Some(d.image.clone()),
            ..FunctionCode::default()
        },
        (None, Some(bundle)) => FunctionCode {
            repository_type: "Bundle".into(),
            location: Some(bundle.to_string()),
            ..FunctionCode::default()
        },
        (None, None) => FunctionCode {
            repository_type: "Process".into(),
            ..FunctionCode::default()
        },
    };
    Ok(Json(GetFunctionResponse {
        configuration: configuration(&state, &f, &caller),
        code,
        tags: d.labels.clone().unwrap_or_default(),
    }))
}

/// `f`'s configuration in Lambda's shape.
fn configuration(state: &AppState, f: &StoredFunction, caller: &Caller) -> FunctionConfiguration {
    let d = &f.deployment;
    let image = f.image_ref.is_some();
    // What the watchdog runs with: the bundle's manifest, then the function's envVars.
    let mut env = crate::bundles::manifest_env(state, &d.image);
    env.extend(d.env_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    let lambda_mode = env.get("mode").is_some_and(|m| m.trim() == "lambda");
    let handler = match env.get("_HANDLER") {
        Some(h) => Some(h.clone()),
        None if lambda_mode => Some("handler.handler".into()),
        None if !d.env_process.is_empty() => Some(d.env_process.clone()),
        None => env.get("fprocess").cloned(),
    };
    FunctionConfiguration {
        function_name: f.key(),
        function_arn: caller.arn(&f.key()),
        runtime: (!image).then(|| "provided".to_string()),
        handler,
        timeout: timeout_secs(env.get("exec_timeout")),
        memory_size: memory_mb(d),
        last_modified: f
            .created_at
            .format("%Y-%m-%dT%H:%M:%S%.3f+0000")
            .to_string(),
        version: "$LATEST".into(),
        package_type: if image { "Image" } else { "Zip" }.into(),
        environment: Environment {
            variables: d.env_vars.clone(),
        },
        state: "Active".into(),
        last_update_status: "Successful".into(),
        architectures: vec![match std::env::consts::ARCH {
            "aarch64" => "arm64".into(),
            other => other.into(),
        }],
    }
}

/// Whole seconds of `exec_timeout` (rounded up; 0 is no limit).
fn timeout_secs(v: Option<&String>) -> u64 {
    match v.map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => DEFAULT_TIMEOUT_S,
        Some(v) => virga_types::duration::parse(v)
            .map(|d| d.as_millis().div_ceil(1000) as u64)
            .unwrap_or(DEFAULT_TIMEOUT_S),
    }
}

/// `limits.memory` in MB (Lambda's MB are MiB).
fn memory_mb(d: &virga_types::FunctionDeployment) -> u64 {
    d.limits
        .as_ref()
        .map(|l| l.memory.as_str())
        .filter(|m| !m.is_empty())
        .and_then(|m| virga_types::parse_memory(m).ok())
        .map_or(DEFAULT_MEMORY_MB, |b| b.div_ceil(1 << 20))
}
