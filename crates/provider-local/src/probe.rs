//! Readiness of an image instance, which has no Virga watchdog to say it is ready: an HTTP
//! `GET /_/health` on its port (OpenFaaS's watchdog answers 503 there until its function is
//! up), falling back to the TCP connect for images that serve no such route. Polled, as the
//! image cannot push; the first tries come quickly, later ones less often.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::isolation::Life;

/// Longest wait between two probes.
const MAX_GAP: Duration = Duration::from_millis(50);
/// How long one probe's answer may take before the connect alone counts.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// Wait until the instance `life` runs answers at `addr` (the caller bounds the wait).
pub(crate) async fn until_ready(addr: SocketAddr, life: &mut dyn Life) -> Result<(), String> {
    let mut gap = Duration::from_millis(2);
    loop {
        if !life.running() {
            return Err(format!(
                "the image's process exited before it listened on port {}",
                addr.port()
            ));
        }
        if let Ok(mut conn) = TcpStream::connect(addr).await {
            if healthy(&mut conn).await {
                return Ok(());
            }
        }
        tokio::time::sleep(gap).await;
        gap = (gap * 2).min(MAX_GAP);
    }
}

/// Whether a connected instance counts as ready: a 2xx from `/_/health`, or no health route
/// (404, 405, 501, or no HTTP answer at all); a 5xx says not yet.
async fn healthy(conn: &mut TcpStream) -> bool {
    let ask = b"GET /_/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if conn.write_all(ask).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    let read = tokio::time::timeout(ANSWER_TIMEOUT, conn.read_exact(&mut head)).await;
    let Ok(Ok(_)) = read else {
        // It accepted the connection but does not speak HTTP there: the TCP fallback.
        return true;
    };
    match head.strip_prefix(b"HTTP/1.").and_then(|rest| {
        std::str::from_utf8(rest.get(2..5)?)
            .ok()?
            .parse::<u16>()
            .ok()
    }) {
        Some(code) => !(500..600).contains(&code) || code == 501,
        None => true,
    }
}
