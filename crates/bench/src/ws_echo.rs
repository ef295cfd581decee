//! A trivially fast WebSocket echo server (`virga-bench ws-echo`), the upstream of the
//! connection figures, so that what is measured in front of it is the platform's cost of
//! carrying a WebSocket rather than a runtime's. It listens on the port of `upstream_url` as
//! template runtimes do, takes any upgrade (one thread per connection) and sends every
//! message back as it came.

use std::net::{TcpListener, TcpStream};
use std::thread;

use anyhow::{Context, Result};
use tungstenite::Message;

use crate::fast_upstream::port_of;

/// Serves until killed.
pub fn serve() -> Result<()> {
    let upstream = std::env::var("upstream_url").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
    let port =
        port_of(&upstream).with_context(|| format!("no port in upstream_url {upstream:?}"))?;
    let listener = TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("listen on 127.0.0.1:{port}"))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        thread::spawn(move || {
            let _ = echo(conn);
        });
    }
    Ok(())
}

fn echo(conn: TcpStream) -> Result<()> {
    conn.set_nodelay(true)?;
    let mut ws = tungstenite::accept(conn)?;
    loop {
        match ws.read()? {
            m @ (Message::Text(_) | Message::Binary(_)) => ws.send(m)?,
            Message::Close(_) => return Ok(()),
            // Pings are answered by the library on the next write or flush.
            _ => ws.flush()?,
        }
    }
}
