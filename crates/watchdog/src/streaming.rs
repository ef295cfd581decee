//! Streaming mode (of-watchdog default): one process per request, the request
//! body piped to stdin and stdout streamed back as it is produced. Headers are
//! sent once the first output arrives (or at exit).

use std::io;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::task::JoinHandle;

use crate::body::{empty, text, ReaderBody, ResponseBody};
use crate::cgi::cgi_env;
use crate::process::{describe_status, ExecSettings, GroupKill, STDERR_CAPTURE};

/// Size of the first stdout read.
const FIRST_READ: usize = 16 * 1024;

/// Copies the request body to the function's stdin, then closes it.
fn pump_stdin(mut body: Incoming, stdin: Option<ChildStdin>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(mut stdin) = stdin else { return };
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                if stdin.write_all(&data).await.is_err() {
                    break;
                }
            }
        }
        // Dropping stdin closes it so the function sees EOF.
    })
}

/// Waits for exit until `deadline`; `None` means the deadline passed.
async fn wait_until(
    child: &mut Child,
    deadline: Option<Instant>,
) -> Option<io::Result<ExitStatus>> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), child.wait()).await.ok(),
        None => Some(child.wait().await),
    }
}

fn timeout_response(program: &str, t: Option<Duration>) -> Response<ResponseBody> {
    let t = t.unwrap_or_default();
    tracing::warn!(program, timeout = ?t, "function exceeded exec_timeout; killed");
    text(
        StatusCode::GATEWAY_TIMEOUT,
        format!("function exceeded exec_timeout of {t:?} and was killed"),
    )
}

/// Handles one request, streaming the function's stdout as the response body.
pub async fn handle(settings: &ExecSettings, req: Request<Incoming>) -> Response<ResponseBody> {
    let deadline = settings.exec_timeout.map(|t| Instant::now() + t);
    let (parts, body) = req.into_parts();
    let env = if settings.cgi_headers {
        cgi_env(&parts.method, &parts.uri, &parts.headers, None)
    } else {
        Vec::new()
    };
    let program = settings.spec.program().to_owned();
    let mut child = match settings.spec.command(env).spawn() {
        Ok(c) => c,
        Err(e) => return crate::body::spawn_failed(&program, &e),
    };
    let group = GroupKill::new(child.id());
    let pump = pump_stdin(body, child.stdin.take());
    let stderr = child
        .stderr
        .take()
        .map(|s| settings.stderr_logger().forward(s, STDERR_CAPTURE));
    let Some(mut stdout) = child.stdout.take() else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "function process has no stdout",
        );
    };
    let call = Call {
        program,
        child,
        group,
        pump,
        stderr,
        deadline,
        exec_timeout: settings.exec_timeout,
    };

    let mut buf = vec![0u8; FIRST_READ];
    let first = match deadline {
        Some(d) => match tokio::time::timeout_at(d.into(), stdout.read(&mut buf)).await {
            Ok(r) => r,
            Err(_) => return call.timed_out(),
        },
        None => stdout.read(&mut buf).await,
    };
    let content_type = settings.response_content_type(&parts.headers);
    match first {
        Ok(n) if n > 0 => {
            buf.truncate(n);
            let body = ReaderBody::new(Some(Bytes::from(buf)), stdout).boxed_unsync();
            // The response is already under way: enforce the deadline and log the exit in
            // the background.
            tokio::spawn(call.supervise());
            with_content_type(Response::new(body), content_type)
        }
        // EOF (or a broken pipe) before any output: the exit status decides.
        _ => {
            drop(stdout);
            call.finish(content_type).await
        }
    }
}

/// The function process of one request, and the tasks feeding its stdin and reading its
/// stderr.
struct Call {
    program: String,
    child: Child,
    group: GroupKill,
    pump: JoinHandle<()>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    deadline: Option<Instant>,
    exec_timeout: Option<Duration>,
}

impl Call {
    /// The deadline passed before any output: kill the function, answer 504.
    fn timed_out(mut self) -> Response<ResponseBody> {
        self.group.kill();
        self.pump.abort();
        timeout_response(&self.program, self.exec_timeout)
    }

    /// Wait for the exit of a function whose response is streaming; kill it at the deadline.
    async fn supervise(mut self) {
        let status = wait_until(&mut self.child, self.deadline).await;
        self.pump.abort();
        let program = &self.program;
        match status {
            None => {
                self.group.kill();
                tracing::warn!(program, timeout = ?self.exec_timeout.unwrap_or_default(),
                    "function exceeded exec_timeout while streaming; killed");
            }
            Some(Ok(s)) => {
                self.group.disarm();
                if !s.success() {
                    tracing::warn!(program, status = %describe_status(&s),
                        "function failed after its response had started");
                }
            }
            Some(Err(e)) => {
                tracing::warn!(program, error = %e, "failed to wait for function")
            }
        }
        if let Some(h) = self.stderr {
            let _ = h.await;
        }
    }

    /// The answer of a function that wrote nothing: empty if it succeeded, else its failure
    /// and stderr.
    async fn finish(mut self, content_type: Option<HeaderValue>) -> Response<ResponseBody> {
        let status = wait_until(&mut self.child, self.deadline).await;
        self.pump.abort();
        let Some(status) = status else {
            return self.timed_out();
        };
        self.group.disarm();
        // Bounded: a leftover grandchild may keep stderr open.
        let err = match self.stderr {
            Some(h) => tokio::time::timeout(Duration::from_secs(1), h)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let program = &self.program;
        match status {
            Ok(s) if s.success() => with_content_type(Response::new(empty()), content_type),
            Ok(s) => {
                let what = describe_status(&s);
                tracing::warn!(program, status = %what, "function failed");
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "function process failed with {what}\n{}",
                        String::from_utf8_lossy(&err)
                    ),
                )
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to wait for the function process: {e}"),
            ),
        }
    }
}

/// `resp` with `Content-Type: content_type`, if there is one.
fn with_content_type(
    mut resp: Response<ResponseBody>,
    content_type: Option<HeaderValue>,
) -> Response<ResponseBody> {
    if let Some(ct) = content_type {
        resp.headers_mut().insert(CONTENT_TYPE, ct);
    }
    resp
}
