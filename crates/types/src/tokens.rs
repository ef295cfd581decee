//! Bodies of Virga's API tokens (`/system/virga/tokens`) and audit log
//! (`/system/virga/audit`). A token's secret appears only in [`CreatedToken`], once.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `POST /system/virga/tokens`: the token to create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequest {
    /// A name for people and the audit log (a DNS-1123 label, unique among tokens).
    #[serde(default)]
    pub name: String,
    /// `viewer`, `invoker`, `deployer` or `admin`.
    #[serde(default)]
    pub role: String,
    /// The namespaces it acts in; required unless the role is `admin` (all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// How long it is valid, e.g. `720h`; forever when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    /// Whether it also serves as an AWS access key pair for the Lambda API (key id = its id,
    /// secret key = its secret), which needs its secret kept sealed, not just hashed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub access_key: bool,
}

/// A token as listed: never its secret nor its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    /// Its id (also in the token string, and the SigV4 access key id).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: String,
    /// Its namespaces; `None` for all (an admin token).
    pub namespaces: Option<Vec<String>>,
    /// When it was created.
    pub created: DateTime<Utc>,
    /// When it stops being accepted, if ever.
    pub expires: Option<DateTime<Utc>>,
    /// Who created it (a user or `token:NAME`).
    #[serde(default)]
    pub created_by: String,
    /// Whether it is also an AWS access key pair (see [`TokenRequest::access_key`]).
    #[serde(default)]
    pub access_key: bool,
}

/// The answer to a create: the token itself, shown this once, and what was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The bearer token, `vg_ID_SECRET`.
    pub token: String,
    /// Its stored description.
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// One change recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, growing by one per entry.
    pub seq: u64,
    /// When the change was answered.
    pub time: DateTime<Utc>,
    /// Who asked: the admin's user name or `token:NAME`.
    pub who: String,
    /// Method and path, e.g. `POST /system/secrets`.
    pub action: String,
    /// What it named: `NAMESPACE/NAME`, a name, or an id.
    pub target: Option<String>,
    /// The answer's HTTP status.
    pub status: u16,
}
