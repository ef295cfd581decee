//! Serializing mode (classic watchdog): one process per request, the whole
//! request body on stdin and the whole stdout as the response body.
//!
//! No process of a call outlives it: its process group is killed when it ends, and in a
//! sandbox (where the watchdog has a PID namespace to itself) the last call in flight to end
//! kills every other process there, which also takes what left the group (`setsid`).

use std::io;
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::body::{full, text, ResponseBody};
use crate::cgi::cgi_env;
use crate::process::{describe_status, ExecSettings, GroupKill};
use crate::spawn::Running;

/// Classic calls in flight in this process.
static IN_FLIGHT: Mutex<usize> = Mutex::new(0);

fn in_flight() -> MutexGuard<'static, usize> {
    IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// One call, counted from before its process starts until it is dropped.
struct Call;

impl Call {
    /// Counts a call and runs `spawn` under the same lock, so the sweep of a call ending at
    /// the same moment cannot hit the new call's process.
    fn start<T>(spawn: impl FnOnce() -> T) -> (Call, T) {
        let mut n = in_flight();
        *n += 1;
        (Call, spawn())
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let mut n = in_flight();
        *n -= 1;
        if *n == 0 && crate::init::owns_pid_namespace() {
            // kill(-1) spares PID 1 (the reaper) and the caller, and reaches nothing outside
            // the namespace; everything else here belongs to a finished call.
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(-1, libc::SIGKILL) };
        }
    }
}

/// Reads a whole request body, bounded by `read_timeout`.
pub(crate) async fn read_body(
    settings: &ExecSettings,
    body: Incoming,
) -> Result<Bytes, Response<ResponseBody>> {
    let collect = body.collect();
    let collected = match settings.read_timeout {
        Some(t) => match tokio::time::timeout(t, collect).await {
            Ok(r) => r,
            Err(_) => {
                return Err(text(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("timed out after {t:?} reading the request body"),
                ))
            }
        },
        None => collect.await,
    };
    collected.map(|c| c.to_bytes()).map_err(|e| {
        text(
            StatusCode::BAD_REQUEST,
            format!("failed to read the request body: {e}"),
        )
    })
}

async fn read_all<R: AsyncRead + Unpin>(reader: Option<R>, capacity: usize) -> Vec<u8> {
    // Pre-sized so typical outputs arrive in a single read(2).
    let mut out = Vec::with_capacity(capacity);
    if let Some(mut r) = reader {
        // A read error just truncates the output; the exit status decides the result.
        let _ = r.read_to_end(&mut out).await;
    }
    out
}

/// Handles one request by running the function to completion.
pub async fn handle(settings: &ExecSettings, req: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, body) = req.into_parts();
    let body = match read_body(settings, body).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let env = if settings.cgi_headers {
        cgi_env(
            &parts.method,
            &parts.uri,
            &parts.headers,
            Some(body.len() as u64),
        )
    } else {
        Vec::new()
    };

    let program = settings.spec.program();
    let (_call, started) = Call::start(|| Running::spawn(&settings.spec.spawner, &env, &body));
    let (mut child, pending) = match started {
        Ok(started) => started,
        Err(e) => return crate::body::spawn_failed(program, &e),
    };
    let mut group = GroupKill::new(child.id());
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let run = async {
        // What did not fit into the stdin pipe is fed while stdout/stderr are drained,
        // so large bodies cannot deadlock.
        let write = async move {
            if let Some(mut stdin) = stdin {
                // EPIPE just means the function did not read all its input.
                let _ = stdin.write_all(&body[body.len() - pending..]).await;
            }
        };
        let ((), out, err) =
            tokio::join!(write, read_all(stdout, 16 * 1024), read_all(stderr, 1024));
        let status = child.wait().await;
        (out, err, status)
    };
    let outcome = match settings.exec_timeout {
        Some(t) => tokio::time::timeout(t, run).await.ok(),
        None => Some(run.await),
    };
    let Some((out, err, status)) = outcome else {
        group.kill();
        let t = settings.exec_timeout.unwrap_or_default();
        tracing::warn!(program, timeout = ?t, "function exceeded exec_timeout; killed");
        return text(
            StatusCode::GATEWAY_TIMEOUT,
            format!("function exceeded exec_timeout of {t:?} and was killed"),
        );
    };
    // One process per request: whatever it left running in its group goes with it.
    group.kill();
    settings.stderr_logger().all(&err);
    respond(settings, &parts.headers, out, &err, status)
}

fn respond(
    settings: &ExecSettings,
    req_headers: &hyper::HeaderMap,
    out: Vec<u8>,
    err: &[u8],
    status: io::Result<ExitStatus>,
) -> Response<ResponseBody> {
    match status {
        Ok(s) if s.success() => {
            let mut resp = Response::new(full(out));
            if let Some(ct) = settings.response_content_type(req_headers) {
                resp.headers_mut().insert(CONTENT_TYPE, ct);
            }
            resp
        }
        Ok(s) => {
            let what = describe_status(&s);
            tracing::warn!(program = settings.spec.program(), status = %what, "function failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "function process failed with {what}\n{}",
                    String::from_utf8_lossy(err)
                ),
            )
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to wait for the function process: {e}"),
        ),
    }
}
