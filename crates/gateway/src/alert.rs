//! `POST /system/alert`: AlertManager's webhook, which OpenFaaS's Community Edition scales
//! functions with. Every alert naming a function (label `function_name`, `NAME` or
//! `NAME.NAMESPACE`) moves it by OpenFaaS's rule: firing adds `com.openfaas.scale.factor`
//! percent (default 20) of its `com.openfaas.scale.max` replicas, up to max; resolved goes
//! back to `com.openfaas.scale.min`. Alerts for functions that are gone are skipped, so
//! AlertManager does not retry them forever.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};

use crate::error::parse_json;
use crate::functions::scale_on_alert;
use crate::{ApiError, AppState};

/// AlertManager's webhook body (the parts scaling reads).
#[derive(Deserialize)]
struct Webhook {
    #[serde(default)]
    alerts: Vec<Alert>,
}

/// One alert of the webhook.
#[derive(Deserialize)]
struct Alert {
    #[serde(default)]
    status: String,
    #[serde(default)]
    labels: HashMap<String, String>,
}

/// What one alert did.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Scaled {
    function_name: String,
    status: String,
    /// Replicas before and after; absent for a function that is not deployed.
    #[serde(skip_serializing_if = "Option::is_none")]
    replicas: Option<(u64, u64)>,
}

/// `POST /system/alert`: scale every function an alert names; what each alert did.
pub(crate) async fn receive(
    State(state): State<Arc<AppState>>,
    axum::Extension(who): axum::Extension<crate::Principal>,
    body: Bytes,
) -> Result<Json<Vec<Scaled>>, ApiError> {
    who.check_role(crate::Need::Admin)?;
    let hook: Webhook = parse_json(&body)?;
    let mut done = Vec::new();
    for alert in hook.alerts {
        let Some(name) = alert.labels.get("function_name") else {
            continue;
        };
        let replicas = scale_on_alert(&state, name, alert.status == "firing").await?;
        match replicas {
            Some((from, to)) => {
                tracing::info!(function = %name, from, to, status = %alert.status, "alert")
            }
            None => tracing::warn!(function = %name, "alert for a function that is not deployed"),
        }
        done.push(Scaled {
            function_name: name.clone(),
            status: alert.status,
            replicas,
        });
    }
    Ok(Json(done))
}
