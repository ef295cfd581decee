//! The web console: a small single-page app served at `/ui/` from files embedded in the binary
//! (`crates/gateway/console/`: plain HTML, CSS and JavaScript, no build step, no CDN, no
//! external fonts, so it works offline). The files are public and hold no data at all:
//! everything the console shows comes from the authenticated API. The page asks for the admin
//! password or an API token, checks it with `GET /system/virga/whoami`, keeps it in the tab's
//! `sessionStorage` and sends it (HTTP basic auth, or `Authorization: Bearer`) on every
//! `/system/*` call it makes. It shows one namespace at a time (`GET /system/namespaces` lists
//! the caller's) and hides the actions the caller's role may not do.
//!
//! The console has an origin of its own (its own listener): a function's answer is never served
//! there, so no function page can read the console's storage or act as the signed-in console.
//! It calls functions through `/system/virga/invoke/NAME.NS` (authenticated; the caller's
//! credentials are not passed on, and the answer is sandboxed). The API's `/ui` redirects there.
//!
//! Responses carry `Cache-Control: no-cache` with an `ETag` (a revalidation is a cheap 304 and a
//! new binary's files are never mixed with old ones), and a strict `Content-Security-Policy`
//! that allows only this origin, so the page cannot load or send anything elsewhere.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::extract::{Path, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use include_dir::{include_dir, Dir};
use sha2::{Digest, Sha256};

use crate::{ApiError, AppState};

static ASSETS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/console");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes: `/ui` (redirect), `/ui/` (the page) and `/ui/{*path}` (its assets).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/ui/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move {
                serve(&path, &headers)
            }),
        )
}

/// The API listener's `/ui` routes: a redirect to the console's own origin (`https://` when
/// the listeners serve TLS), or 404 when the console is off.
pub(crate) fn moved<S: Clone + Send + Sync + 'static>(
    console: Option<SocketAddr>,
    https: bool,
) -> Router<S> {
    let scheme = if https { "https" } else { "http" };
    let to = move |headers: HeaderMap| async move { moved_to(console, scheme, &headers) };
    Router::new()
        .route("/ui", get(to))
        .route("/ui/", get(to))
        .route("/ui/{*path}", get(to))
}

fn moved_to(console: Option<SocketAddr>, scheme: &str, headers: &HeaderMap) -> Response {
    let Some(addr) = console else {
        return ApiError::NotFound(
            "the web console is off (virga up --console-listen off): start it with \
             --console-listen ADDR"
                .into(),
        )
        .into_response();
    };
    // A console on every address is on this host: send the browser to the name it used.
    let url = if addr.ip().is_unspecified() {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map_or("127.0.0.1", strip_port);
        format!("{scheme}://{host}:{}/ui/", addr.port())
    } else {
        format!("{scheme}://{addr}/ui/")
    };
    match HeaderValue::from_str(&url) {
        Ok(v) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, v)]).into_response(),
        Err(_) => ApiError::NotFound(format!("the web console is at port {}", addr.port()))
            .into_response(),
    }
}

/// `host:port` → `host` (`[v6]:port` → `[v6]`).
fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// `ANY /system/virga/invoke/{name}[/path]`: a function call made by the console, on its own
/// origin. It goes through the same path as `/function/...`, without the caller's credentials,
/// and its answer always carries `Content-Security-Policy: sandbox`.
pub(crate) async fn invoke(
    State(state): State<Arc<AppState>>,
    axum::Extension(who): axum::Extension<crate::Principal>,
    mut req: Request,
) -> Response {
    let target = match crate::invoke::target_after(&req, "/system/virga/invoke/") {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = who.check(crate::Need::Invoke, &target.namespace) {
        return e.into_response();
    }
    req.headers_mut().remove(header::AUTHORIZATION);
    let mut resp = crate::invoke::call(&state, &target, req).await;
    crate::invoke::sandbox(resp.headers_mut());
    resp
}

/// The `Content-Type` of an asset, by its extension.
fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Strong ETags of every embedded file, computed once.
fn etags() -> &'static HashMap<&'static str, String> {
    static ETAGS: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        let mut map = HashMap::new();
        for f in ASSETS.files() {
            if let Some(p) = f.path().to_str() {
                let digest = Sha256::digest(f.contents());
                map.insert(p, format!("\"{}\"", hex::encode(&digest[..12])));
            }
        }
        map
    })
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let file = (!path.split('/').any(|seg| seg == ".." || seg.is_empty()))
        .then(|| ASSETS.get_file(path))
        .flatten();
    let Some(file) = file else {
        return (StatusCode::NOT_FOUND, "no such console file\n").into_response();
    };
    let etag = etags().get(path).cloned().unwrap_or_default();
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| !etag.is_empty() && v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        file.contents().into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeds_the_console_files() {
        for f in [
            "index.html",
            "app.js",
            "calls.js",
            "core.js",
            "chart.js",
            "edit.js",
            "login.js",
            "ns.js",
            "style.css",
            "favicon.svg",
        ] {
            assert!(ASSETS.get_file(f).is_some(), "{f} is not embedded");
            assert!(etags().contains_key(f));
        }
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
    }

    #[test]
    fn refuses_paths_outside_the_console() {
        let h = HeaderMap::new();
        assert_eq!(serve("../Cargo.toml", &h).status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("nope.js", &h).status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("app.js", &h).status(), StatusCode::OK);
    }

    #[test]
    fn strips_the_port_of_a_host() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn answers_304_to_a_matching_etag() {
        let mut h = HeaderMap::new();
        let tag = etags()["style.css"].clone();
        h.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&tag).unwrap());
        assert_eq!(serve("style.css", &h).status(), StatusCode::NOT_MODIFIED);
    }
}
