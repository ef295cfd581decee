//! HTTP/2 in the watchdog: every mode's listener accepts HTTP/1.1 and h2c (prior knowledge)
//! on the same port, and http mode hands gRPC calls (`content-type: application/grpc*`) to its
//! upstream over h2c, streaming both ways with the trailers intact, while everything else goes
//! on over HTTP/1.1 (what a plain HTTP server speaks).

use std::time::Duration;

use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, TE};
use hyper::Version;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Whether `h` marks a gRPC call.
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The upstream clients of http mode: HTTP/1.1, and h2c with prior knowledge.
pub(crate) fn clients<B>(idle: Duration) -> (Client<HttpConnector, B>, Client<HttpConnector, B>)
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    connector.set_keepalive(Some(virga_http::KEEPALIVE_IDLE));
    connector.set_keepalive_interval(Some(virga_http::KEEPALIVE_INTERVAL));
    connector.set_keepalive_retries(Some(virga_http::KEEPALIVE_RETRIES));
    let http1 = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle)
        .build(connector.clone());
    let http2 = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle)
        .http2_only(true)
        .build(connector);
    (http1, http2)
}

/// Set the version of a request with headers `h` (hop-by-hop ones already gone) for the
/// upstream; true if it goes over h2c. gRPC's `te: trailers` is put back.
pub(crate) fn upstream_version(h: &mut HeaderMap) -> (Version, bool) {
    if is_grpc(h) {
        h.insert(TE, HeaderValue::from_static("trailers"));
        (Version::HTTP_2, true)
    } else {
        (Version::HTTP_11, false)
    }
}
