//! A trivially fast HTTP/1.1 server (`virga-bench fast-upstream`) used as an http-mode
//! function's upstream, so that what is measured in front of it is the gateway's and the
//! watchdog's own cost rather than a runtime's. It listens on the port of the
//! `upstream_url` environment variable, as template runtimes do, keeps connections alive,
//! discards request bodies and answers every request `200 ok`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use anyhow::{Context, Result};

/// The fixed answer.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

/// Serves until killed.
pub fn serve() -> Result<()> {
    serve_each(|conn| {
        let _ = handle(conn);
    })
}

/// Listen on the port of `upstream_url` (as template runtimes do) and run `each` on every
/// connection in a thread of its own, until killed.
pub fn serve_each(each: fn(TcpStream)) -> Result<()> {
    let port = upstream_port()?;
    let listener = TcpListener::bind(("127.0.0.1", port))
        .with_context(|| format!("listen on 127.0.0.1:{port}"))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        thread::spawn(move || each(conn));
    }
    Ok(())
}

/// The port of the `upstream_url` environment variable (`http://127.0.0.1:5000` if unset).
pub fn upstream_port() -> Result<u16> {
    let upstream = std::env::var("upstream_url").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
    port_of(&upstream).with_context(|| format!("no port in upstream_url {upstream:?}"))
}

/// The explicit port of an `http://host:port/...` URL.
pub fn port_of(url: &str) -> Option<u16> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    authority.rsplit_once(':')?.1.parse().ok()
}

fn handle(conn: TcpStream) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    loop {
        // Request line, then headers up to the blank line.
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut length = 0u64;
        let mut close = line.trim_end().ends_with("HTTP/1.0");
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().unwrap_or(0);
                } else if name.eq_ignore_ascii_case("connection") {
                    close = value.eq_ignore_ascii_case("close");
                }
            }
        }
        std::io::copy(&mut (&mut reader).take(length), &mut std::io::sink())?;
        writer.write_all(RESPONSE)?;
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_port_of_upstream_url() {
        assert_eq!(port_of("http://127.0.0.1:5000"), Some(5000));
        assert_eq!(port_of("http://127.0.0.1:41000/x"), Some(41000));
        assert_eq!(port_of("http://localhost/"), None);
    }
}
