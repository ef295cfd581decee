//! TCP keep-alive for the sockets of calls: a call may be quiet for hours (a long computation
//! before its answer, a stream between two events), and a NAT, load balancer or firewall
//! between two hops drops connections it has seen nothing on for a few minutes. Probes after a
//! minute of silence keep such a connection known to them, and find a dead peer.

use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// Silence before the first probe (well under the usual 5-minute idle limits).
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between unanswered probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
/// Unanswered probes before the connection counts as dead.
pub const KEEPALIVE_RETRIES: u32 = 4;

/// Turn TCP keep-alive on for `socket` (an accepted or connected TCP stream).
pub fn keep_alive<S: AsFd>(socket: &S) -> std::io::Result<()> {
    let ka = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    SockRef::from(socket).set_tcp_keepalive(&ka)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_is_set_on_a_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        keep_alive(&s).unwrap();
        let r = SockRef::from(&s);
        assert!(r.keepalive().unwrap());
        assert_eq!(r.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(r.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
    }
}
