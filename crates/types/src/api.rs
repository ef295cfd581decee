//! JSON bodies of the OpenFaaS gateway API, with OpenFaaS's field names.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// CPU and memory, as strings in Kubernetes notation (`128M`, `0.5`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FunctionResources {
    /// Memory, e.g. `128Mi` or `128M`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub memory: String,
    /// CPU cores, e.g. `0.5` or `500m`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cpu: String,
}

/// The body of `POST/PUT /system/functions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeployment {
    /// Function name (a DNS-1123 label).
    pub service: String,
    /// Image reference; for code built by `virga build`, a [`BundleRef`].
    #[serde(default)]
    pub image: String,
    /// Namespace; empty means [`crate::DEFAULT_NAMESPACE`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Command the watchdog runs (`fprocess`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub env_process: String,
    /// Environment variables for the function.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// Placement constraints (kept, not used by the local provider).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Names of secrets the function may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Labels, e.g. the `com.openfaas.scale.*` family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FunctionResources>,
    /// Resource requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FunctionResources>,
    /// Make the root filesystem read-only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root_filesystem: bool,
    /// Registry credentials for pulling `image` (base64 `user:password`, what `faas-cli
    /// deploy --send-registry-auth` sends); used for the deploy's pull, never stored.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub registry_auth: String,
}

/// One entry of `GET /system/functions` and the body of `GET /system/function/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// Function name.
    pub name: String,
    /// Image reference.
    #[serde(default)]
    pub image: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Command the watchdog runs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub env_process: String,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: BTreeMap<String, String>,
    /// Placement constraints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// Secret names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FunctionResources>,
    /// Resource requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FunctionResources>,
    /// Read-only root filesystem.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root_filesystem: bool,
    /// Invocations served since the gateway started.
    #[serde(default)]
    pub invocation_count: f64,
    /// Desired instances.
    #[serde(default)]
    pub replicas: u64,
    /// Instances ready to serve.
    #[serde(default)]
    pub available_replicas: u64,
    /// When the function was first deployed.
    pub created_at: DateTime<Utc>,
    /// For a registry image: the `repo@sha256:...` it is pinned to (Virga only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_image: Option<String>,
    /// For a registry image: the digest it is pinned to (Virga only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// For a registry image: a pull under way, or why the last one failed (Virga only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull: Option<ImagePull>,
}

/// An image pull of a function, under way or failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagePull {
    /// `pulling` or `failed`.
    pub state: String,
    /// The reference pulled.
    pub image: String,
    /// Layers (and config) fetched so far.
    pub layers_done: u64,
    /// Layers (and config) to fetch.
    pub layers_total: u64,
    /// Compressed bytes fetched so far.
    pub bytes_done: u64,
    /// Compressed bytes to fetch.
    pub bytes_total: u64,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FunctionStatus {
    /// The status of `d` with the given counters.
    pub fn from_deployment(
        d: &FunctionDeployment,
        created_at: DateTime<Utc>,
        replicas: u64,
        available_replicas: u64,
        invocation_count: f64,
    ) -> Self {
        FunctionStatus {
            name: d.service.clone(),
            image: d.image.clone(),
            namespace: d.namespace.clone(),
            env_process: d.env_process.clone(),
            env_vars: d.env_vars.clone(),
            constraints: d.constraints.clone(),
            secrets: d.secrets.clone(),
            labels: d.labels.clone(),
            annotations: d.annotations.clone(),
            limits: d.limits.clone(),
            requests: d.requests.clone(),
            read_only_root_filesystem: d.read_only_root_filesystem,
            invocation_count,
            replicas,
            available_replicas,
            created_at,
            pinned_image: None,
            image_digest: None,
            image_pull: None,
        }
    }
}

/// The body of `DELETE /system/functions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteFunctionRequest {
    /// Function to delete.
    pub function_name: String,
    /// Its namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

/// The body of `POST /system/scale-function/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScaleServiceRequest {
    /// Function to scale.
    pub service_name: String,
    /// Its namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Wanted instances (0 allowed).
    pub replicas: u64,
}

/// A secret, as sent to and listed by `/system/secrets`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    /// Secret name (a DNS-1123 label).
    pub name: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Text value; never returned by GET.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    /// Binary value, base64 in JSON; never returned by GET.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "crate::bundle::base64_bytes"
    )]
    pub raw_value: Vec<u8>,
}

impl Secret {
    /// The secret's bytes: `rawValue` when given, otherwise `value`.
    pub fn bytes(&self) -> &[u8] {
        if self.raw_value.is_empty() {
            self.value.as_bytes()
        } else {
            &self.raw_value
        }
    }
}

/// Version of a component in `/system/info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Last commit message (empty when unknown).
    #[serde(default)]
    pub commit_message: String,
    /// Commit id (empty when unknown).
    #[serde(default)]
    pub sha: String,
    /// Release version.
    pub release: String,
}

/// The provider part of `/system/info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderInfo {
    /// Provider name.
    pub provider: String,
    /// Orchestration, `local` here.
    pub orchestration: String,
    /// Provider version.
    pub version: VersionInfo,
    /// Virga extension: which isolation instances run under.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub isolation: String,
}

/// The body of `GET /system/info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayInfo {
    /// The provider.
    pub provider: ProviderInfo,
    /// Gateway version.
    pub version: VersionInfo,
    /// CPU architecture.
    pub arch: String,
}

/// One entry of `GET /system/namespaces` is a plain string; this is the bundle upload answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BundleUploaded {
    /// The image reference to deploy the bundle with.
    pub image: String,
    /// Bytes stored.
    pub size: u64,
}
