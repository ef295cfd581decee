//! HTTP pieces the gateway and the watchdog share, both of them proxies: [`Replayable`], a
//! request body that can be sent again while nothing has read it (so a request whose upstream
//! died before reading it goes to another instance, or to the restarted process),
//! [`HOP_BY_HOP`], the headers that belong to one connection and are never forwarded, and
//! [`keep_alive`], TCP keep-alive for the sockets of calls that may be quiet for hours, and
//! [`upgrade`], carrying an HTTP/1.1 `Upgrade` (a WebSocket) across a hop and splicing the
//! two upgraded connections, and [`handoff`], the gateway handing such a client connection
//! to the instance's watchdog so one proxy splices it, not two.

pub mod handoff;
mod keepalive;
mod replay;
pub mod upgrade;

pub use keepalive::{keep_alive, KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_RETRIES};
pub use replay::{Attempt, Replayable};

use http::header::{self, HeaderName};

/// Headers that belong to one hop and must not be forwarded (RFC 9110 §7.6.1, plus the
/// non-standard `keep-alive` and `proxy-connection` that old clients send).
pub const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
