//! Forwarding a function's output to the watchdog's stderr, line by line, with or without
//! the of-watchdog style prefix.

use std::io::Write;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::task::JoinHandle;

/// Writes function output lines to the watchdog's stderr.
#[derive(Debug, Clone, Copy)]
pub struct LineLogger {
    /// Stream name used in the prefix (`stdout` / `stderr`).
    pub name: &'static str,
    /// Add the `<timestamp> <name>: ` prefix.
    pub prefix: bool,
    /// Maximum line length before a line is split.
    pub max_line: usize,
}

impl LineLogger {
    /// Logs one line (without its trailing newline).
    pub fn line(&self, line: &[u8]) {
        let mut err = std::io::stderr().lock();
        // Write errors on our own stderr cannot be reported anywhere useful.
        let _ = if self.prefix {
            let ts = chrono::Local::now().format("%Y/%m/%d %H:%M:%S");
            write!(err, "{ts} {}: ", self.name)
                .and_then(|_| err.write_all(line))
                .and_then(|_| err.write_all(b"\n"))
        } else {
            err.write_all(line).and_then(|_| err.write_all(b"\n"))
        };
    }

    /// Logs a complete buffer, line by line.
    pub fn all(&self, data: &[u8]) {
        let data = data.strip_suffix(b"\n").unwrap_or(data);
        if data.is_empty() {
            return;
        }
        for line in data.split(|b| *b == b'\n') {
            for piece in line.chunks(self.max_line.max(1)) {
                self.line(piece);
            }
            if line.is_empty() {
                self.line(line);
            }
        }
    }

    /// Forwards `reader` line by line until EOF; returns up to `capture` bytes
    /// of the output (for error responses).
    pub fn forward<R>(self, mut reader: R, capture: usize) -> JoinHandle<Vec<u8>>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        tokio::spawn(async move {
            let mut captured = Vec::new();
            let mut pending: Vec<u8> = Vec::new();
            let mut buf = vec![0u8; 8192];
            loop {
                let n = match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                let room = capture.saturating_sub(captured.len());
                captured.extend_from_slice(&chunk[..room.min(n)]);
                pending.extend_from_slice(chunk);
                while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                    self.line(&pending[..pos]);
                    pending.drain(..=pos);
                }
                while pending.len() >= self.max_line.max(1) {
                    let rest = pending.split_off(self.max_line.max(1));
                    self.line(&pending);
                    pending = rest;
                }
            }
            if !pending.is_empty() {
                self.line(&pending);
            }
            captured
        })
    }
}
