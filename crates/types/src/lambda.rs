//! JSON bodies of the AWS Lambda API that the gateway serves (`/2015-03-31/functions`), with
//! Lambda's field names, for the fields Virga has.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The account id in the ARNs Virga gives its functions.
pub const ACCOUNT_ID: &str = "000000000000";

/// The ARN of function `name` in `region`.
pub fn function_arn(region: &str, name: &str) -> String {
    format!("arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{name}")
}

/// A function's environment as Lambda shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Environment {
    /// The function's own variables (never its secrets).
    pub variables: BTreeMap<String, String>,
}

/// One function's configuration (`ListFunctions` entries, `GetFunction`'s `Configuration`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionConfiguration {
    /// The name.
    pub function_name: String,
    /// `arn:aws:lambda:REGION:000000000000:function:NAME`.
    pub function_arn: String,
    /// The runtime id (`provided`: Virga runs the function's own process); none for images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// `_HANDLER`, or the command the watchdog runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Seconds a call may run (`exec_timeout`).
    pub timeout: u64,
    /// Megabytes of memory (`limits.memory`).
    pub memory_size: u64,
    /// ISO 8601 with `+0000`, as Lambda writes it.
    pub last_modified: String,
    /// Always `$LATEST`.
    pub version: String,
    /// `Zip` for a bundle, `Image` for a registry image.
    pub package_type: String,
    /// The function's environment variables.
    pub environment: Environment,
    /// `Active`.
    pub state: String,
    /// `Successful`.
    pub last_update_status: String,
    /// The instruction set, `x86_64` or `arm64`.
    pub architectures: Vec<String>,
}

/// The body of `GET /2015-03-31/functions/`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListFunctionsResponse {
    /// One page of functions, by name.
    pub functions: Vec<FunctionConfiguration>,
    /// The `Marker` of the next page, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
}

/// Where a function's code is (`GetFunction`'s `Code`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FunctionCode {
    /// `Bundle` (code built by `virga build`) or `Image` (a registry image).
    pub repository_type: String,
    /// A bundle's reference, `virga.local/NAME@sha256:HEX`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// An image's reference as deployed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_uri: Option<String>,
    /// The image it is pinned to, `repo@sha256:...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_image_uri: Option<String>,
}

/// The body of `GET /2015-03-31/functions/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetFunctionResponse {
    /// The configuration.
    pub configuration: FunctionConfiguration,
    /// Where its code is.
    pub code: FunctionCode,
    /// The function's labels.
    pub tags: BTreeMap<String, String>,
}

/// Lambda's error body (with `x-amzn-ErrorType` naming the exception).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// `User` for the caller's faults, `Service` for Virga's.
    #[serde(rename = "Type")]
    pub kind: String,
    /// What went wrong and what to do.
    pub message: String,
}
