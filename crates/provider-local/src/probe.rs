//! Readiness of an image instance, which has no Virga watchdog to say it is ready: an HTTP
//! `GET /_/health` on its port (OpenFaaS's watchdog answers 503 there until its function is
//! up), falling back to the TCP connect for images that serve no such route. Polled, as the
//! image cannot push; the first tries come quickly, later ones less often.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::isolation::Life;

/// How long probes come every millisecond (most images listen within it).
const EAGER: Duration = Duration::from_millis(250);
/// Longest wait between two probes after that.
const MAX_GAP: Duration = Duration::from_millis(50);
/// How long one probe's answer may take before the connect alone counts.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// Wait until the instance `life` runs answers at `addr` (the caller bounds the wait).
pub(crate) async fn until_ready(addr: SocketAddr, life: &mut dyn Life) -> Result<(), String> {
    let started = Instant::now();
    let mut gap = Duration::from_millis(1);
    loop {
        if !life.running() {
            return Err(format!(
                "the image's process exited before it listened on port {}",
                addr.port()
            ));
        }
        if let Ok(conn) = TcpStream::connect(addr).await {
            if healthy(conn).await {
                return Ok(());
            }
        }
        tokio::time::sleep(gap).await;
        if started.elapsed() > EAGER {
            gap = (gap * 2).min(MAX_GAP);
        }
    }
}

/// Whether a connected instance counts as ready: a 2xx from `/_/health`, or no health route
/// (404, 405, 501, or no HTTP answer at all); a 5xx says not yet.
async fn healthy(conn: TcpStream) -> bool {
    let ask = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(conn)).await?;
        tokio::spawn(conn);
        let req = Request::get("/_/health")
            .header(hyper::header::HOST, "localhost")
            .body(Empty::<Bytes>::new())
            .map_err(|_| ())
            .ok();
        match req {
            Some(req) => sender.send_request(req).await.map(|r| Some(r.status())),
            None => Ok(None),
        }
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, ask).await {
        Ok(Ok(Some(status))) => !status.is_server_error() || status.as_u16() == 501,
        // It accepted the connection but does not speak HTTP there: the TCP fallback.
        _ => true,
    }
}
