//! `GET /system/virga/whoami`: who the request's credentials are and what they may do, so a
//! client (the console) shows only the actions the caller's role allows. Every signed-in
//! caller may ask about itself; the answer holds no secret.

use axum::{Extension, Json};
use serde::Serialize;

use crate::{Principal, Role};

/// The answer: `namespaces` is `null` for a caller of every namespace (the admin).
#[derive(Debug, Serialize)]
pub(crate) struct WhoAmI {
    name: String,
    role: Role,
    namespaces: Option<Vec<String>>,
}

/// `GET /system/virga/whoami`.
pub(crate) async fn get(Extension(who): Extension<Principal>) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: who.name,
        role: who.role,
        namespaces: who.namespaces,
    })
}
