//! The runtime's stdout and stderr: forwarded line by line to the watchdog's log as in every
//! mode, and, while a call asked for `X-Amz-Log-Type: Tail`, also kept for its
//! `X-Amz-Log-Result` (framed like Lambda: `START`, the lines, `END`, `REPORT`; last 4 KB).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;

use super::runtime::Settings;
use super::Shared;
use crate::logger::LineLogger;

/// The size of Lambda's log tail.
const TAIL: usize = 4096;
/// How long a finished call waits for lines still in the pipes.
const FLUSH_WAIT: Duration = Duration::from_millis(100);

/// The lines of the call that asked for them.
pub(crate) struct Capture {
    active: AtomicBool,
    lines: Mutex<Vec<u8>>,
    /// Signalled after each chunk a forwarder has handled.
    progress: Notify,
    /// The runtime's stdout and stderr pipes (-1 when none), to see what is still unread.
    pipes: [AtomicI32; 2],
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            active: AtomicBool::new(false),
            lines: Mutex::new(Vec::new()),
            progress: Notify::new(),
            pipes: [AtomicI32::new(-1), AtomicI32::new(-1)],
        }
    }
}

impl Capture {
    /// Starts keeping lines (for the call just handed over).
    pub(crate) fn start(&self) {
        self.lock().clear();
        self.active.store(true, Ordering::Release);
    }

    /// Records the runtime process's pipes.
    pub(crate) fn set_pipes(&self, stdout: RawFd, stderr: RawFd) {
        self.pipes[0].store(stdout, Ordering::Release);
        self.pipes[1].store(stderr, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn line(&self, line: &[u8]) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let mut lines = self.lock();
        lines.extend_from_slice(line);
        lines.push(b'\n');
        if lines.len() > 2 * TAIL {
            let cut = lines.len() - TAIL;
            lines.drain(..cut);
        }
    }

    /// Whether the pipes still hold bytes the forwarders have not read.
    fn unread(&self) -> bool {
        self.pipes.iter().any(|fd| {
            let fd = fd.load(Ordering::Acquire);
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int; a closed or reused fd only makes it fail.
            fd >= 0 && unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) } == 0 && n > 0
        })
    }

    /// Ends the capture (after the lines the runtime wrote before answering were read):
    /// base64 of the framed tail.
    pub(crate) async fn finish(&self, id: &str, took: Duration, settings: &Settings) -> String {
        let _ = tokio::time::timeout(FLUSH_WAIT, async {
            while self.unread() {
                let _ =
                    tokio::time::timeout(Duration::from_millis(5), self.progress.notified()).await;
            }
        })
        .await;
        // The forwarder handles what it read before it yields.
        tokio::task::yield_now().await;
        self.active.store(false, Ordering::Release);
        let lines = std::mem::take(&mut *self.lock());
        frame(id, &lines, took, settings)
    }

    /// The tail of a call that never reached the runtime.
    pub(crate) fn empty(&self, id: &str, settings: &Settings) -> String {
        frame(id, b"", Duration::ZERO, settings)
    }
}

/// START, the lines, END and REPORT; the last [`TAIL`] bytes, base64.
fn frame(id: &str, lines: &[u8], took: Duration, settings: &Settings) -> String {
    let ms = took.as_secs_f64() * 1000.0;
    let mut log = format!("START RequestId: {id} Version: $LATEST\n").into_bytes();
    log.extend_from_slice(lines);
    log.extend_from_slice(
        format!(
            "END RequestId: {id}\nREPORT RequestId: {id}\tDuration: {ms:.2} ms\t\
             Billed Duration: {} ms\tMemory Size: {} MB\t\n",
            ms.ceil() as u64,
            settings.memory_mb
        )
        .as_bytes(),
    );
    let tail = &log[log.len().saturating_sub(TAIL)..];
    base64::engine::general_purpose::STANDARD.encode(tail)
}

/// Forwards `reader` (a runtime pipe) to the watchdog's log, line by line, keeping the lines
/// of a call that asked for them.
pub(crate) fn forward<R>(shared: Arc<Shared>, mut reader: R, logger: LineLogger)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let max = logger.max_line.max(1);
        let mut pending: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
                logger.line(&pending[..pos]);
                shared.logs.line(&pending[..pos]);
                pending.drain(..=pos);
            }
            while pending.len() >= max {
                let rest = pending.split_off(max);
                logger.line(&pending);
                shared.logs.line(&pending);
                pending = rest;
            }
            shared.logs.progress.notify_waiters();
        }
        if !pending.is_empty() {
            logger.line(&pending);
            shared.logs.line(&pending);
        }
    });
}
