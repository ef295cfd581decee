//! A trivially fast WebSocket echo server (`virga-bench ws-echo`), the upstream of the
//! connection figures, so that what is measured in front of it is the platform's cost of
//! carrying a WebSocket rather than a runtime's. It listens on the port of `upstream_url` as
//! template runtimes do, takes any upgrade (one thread per connection) and sends every
//! message back as it came.

use std::net::TcpStream;

use anyhow::Result;
use tungstenite::Message;

use crate::fast_upstream::serve_each;

/// Serves until killed.
pub fn serve() -> Result<()> {
    serve_each(|conn| {
        let _ = echo(conn);
    })
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
