//! The runtime process: its Lambda environment (computed once), and the supervisor that starts
//! it, fails the event it held when it dies, and starts it again (at once after a timeout or a
//! crash during an invocation, with a growing backoff while it fails to initialise).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use tokio::process::{Child, Command};

use super::errors::exited;
use super::{logs, InitFailure, Outcome, Shared};
use crate::config::Config;
use crate::logger::LineLogger;
use crate::process::{describe_status, signal_group, FunctionSpec};

/// Restart backoff bounds for a runtime that fails to initialise.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a runtime may take to ask for its first event (Lambda's init limit), unless
/// `exec_timeout` is longer.
const INIT_LIMIT: Duration = Duration::from_secs(10);
/// Grace between SIGTERM and SIGKILL at shutdown.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Lambda's longest timeout: the deadline of a call without `exec_timeout`.
pub(crate) const UNLIMITED: Duration = Duration::from_secs(900);

/// What the runtime is started with, fixed at start.
pub(crate) struct Settings {
    /// The runtime's command.
    pub(crate) spec: FunctionSpec,
    /// The deadline of one invocation.
    pub(crate) exec_timeout: Option<Duration>,
    /// `AWS_LAMBDA_FUNCTION_MEMORY_SIZE` (MB), for the log's REPORT line.
    pub(crate) memory_mb: String,
    /// `Lambda-Runtime-Invoked-Function-Arn`.
    pub(crate) arn: HeaderValue,
    /// Where the runtime starts (`LAMBDA_TASK_ROOT`).
    pub(crate) task_root: PathBuf,
    /// The Lambda variables added to the inherited environment.
    pub(crate) env: Vec<(OsString, OsString)>,
}

impl Settings {
    /// The runtime's environment for a Runtime API at `api`, started in `cwd`: `overlay` (a
    /// pooled instance's function environment, given at bind) and the Lambda variables that
    /// neither it nor the watchdog's environment sets already (`AWS_LAMBDA_RUNTIME_API` always).
    pub(crate) fn new(
        config: &Config,
        api: SocketAddr,
        overlay: &BTreeMap<String, String>,
        cwd: PathBuf,
    ) -> Settings {
        let var = |name: &str| {
            overlay
                .get(name)
                .cloned()
                .or_else(|| std::env::var(name).ok())
                .filter(|v| !v.is_empty())
        };
        let name = var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_else(|| "function".into());
        let region = var("AWS_REGION").unwrap_or_else(|| "us-east-1".into());
        let memory_mb = var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").unwrap_or_else(|| "128".into());
        let timeout = config.exec_timeout.unwrap_or(UNLIMITED);
        let timeout_secs = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
        let task_root = match var("LAMBDA_TASK_ROOT") {
            Some(root) => cwd.join(root),
            None => cwd.clone(),
        };
        let stream = format!(
            "{}/[$LATEST]{}",
            chrono::Utc::now().format("%Y/%m/%d"),
            uuid::Uuid::new_v4().simple()
        );
        let defaults = [
            ("AWS_LAMBDA_FUNCTION_NAME", name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb.clone()),
            ("AWS_LAMBDA_FUNCTION_TIMEOUT", timeout_secs.to_string()),
            ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
            ("AWS_LAMBDA_LOG_STREAM_NAME", stream),
            ("AWS_REGION", region.clone()),
            ("AWS_DEFAULT_REGION", region.clone()),
            ("_HANDLER", "handler.handler".into()),
            ("LAMBDA_RUNTIME_DIR", cwd.display().to_string()),
            ("TZ", ":UTC".into()),
        ];
        let mut env: Vec<(OsString, OsString)> =
            overlay.iter().map(|(k, v)| (k.into(), v.into())).collect();
        env.extend(
            defaults
                .into_iter()
                .filter(|(k, _)| var(k).is_none())
                .map(|(k, v)| (k.into(), v.into())),
        );
        env.push(("LAMBDA_TASK_ROOT".into(), task_root.clone().into()));
        env.push(("AWS_LAMBDA_RUNTIME_API".into(), api.to_string().into()));
        let arn = format!("arn:aws:lambda:{region}:000000000000:function:{name}");
        Settings {
            spec: FunctionSpec::from_config(config),
            exec_timeout: config.exec_timeout,
            memory_mb,
            arn: HeaderValue::from_str(&arn).unwrap_or(HeaderValue::from_static("invalid-arn")),
            task_root,
            env,
        }
    }

    fn command(&self) -> Command {
        let mut cmd = self.spec.long_running_command();
        // A pooled watchdog's bind token and marker are its own, never the function's.
        cmd.env_remove(super::pool::TOKEN_ENV)
            .env_remove(super::pool::POOL_ENV)
            .envs(self.env.iter().cloned())
            .current_dir(&self.task_root);
        cmd
    }
}

/// Keeps a runtime process running until shutdown.
pub(crate) async fn supervise(shared: Arc<Shared>) {
    let mut backoff = BACKOFF_MIN;
    let mut stop = shared.shutdown.subscribe();
    loop {
        let generation = shared.state.borrow().generation + 1;
        shared.state.send_modify(|s| {
            s.generation = generation;
            s.initialised = false;
        });
        let ended = match shared.settings().command().spawn() {
            Ok(child) => run_one(&shared, child, generation).await,
            Err(e) => Some(crate::body::spawn_error(
                shared.settings().spec.program(),
                &e,
            )),
        };
        let Some(status) = ended else { return };
        let initialised = shared.state.borrow().initialised;
        if initialised {
            backoff = BACKOFF_MIN;
            continue;
        }
        // Died before asking for an event: an init failure, unless it posted its own.
        shared.state.send_modify(|s| {
            s.failure.get_or_insert(InitFailure::Exited(status.clone()));
        });
        tracing::warn!(%status, "Lambda runtime failed to initialise; restarting in {backoff:?}");
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = super::until(&mut stop, |s| *s) => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Forwards the runtime's stdout and stderr to the log (and the log tail).
fn forward_output(shared: &Arc<Shared>, child: &mut Child) {
    let logger = |name| LineLogger {
        name,
        prefix: shared.settings().spec.prefix_logs,
        max_line: shared.settings().spec.log_buffer_size,
    };
    let out = child.stdout.take();
    let err = child.stderr.take();
    if let (Some(o), Some(e)) = (&out, &err) {
        shared.logs.set_pipes(o.as_raw_fd(), e.as_raw_fd());
    }
    if let Some(out) = out {
        logs::forward(Arc::clone(shared), out, logger("stdout"));
    }
    if let Some(err) = err {
        logs::forward(Arc::clone(shared), err, logger("stderr"));
    }
}

/// Runs one runtime process until it exits (its exit described) or shutdown (`None`).
async fn run_one(shared: &Arc<Shared>, mut child: Child, generation: u64) -> Option<String> {
    let pid = child.id();
    let settings = shared.settings();
    let program = settings.spec.program();
    tracing::info!(program, pid, "started Lambda runtime");
    forward_output(shared, &mut child);
    shared.lock().pid = pid;
    let mut kill = shared.kill.subscribe();
    let mut stop = shared.shutdown.subscribe();
    // Lambda's limit of the init phase: a runtime that never asks for an event is stopped.
    let init_limit = INIT_LIMIT.max(shared.settings().exec_timeout.unwrap_or_default());
    let init_timeout = async {
        tokio::time::sleep(init_limit).await;
        if shared.state.borrow().initialised {
            std::future::pending::<()>().await;
        }
    };
    let status = tokio::select! {
        status = child.wait() => status,
        _ = init_timeout => {
            tracing::warn!(program, pid, "Lambda runtime did not ask for an event within {init_limit:?}");
            shared.state.send_modify(|s| {
                s.failure.get_or_insert(InitFailure::TimedOut(init_limit));
            });
            if let Some(pid) = pid {
                signal_group(pid, libc::SIGKILL);
            }
            child.wait().await
        }
        _ = super::until(&mut kill, |k| *k >= generation) => {
            if let Some(pid) = pid {
                signal_group(pid, libc::SIGKILL);
            }
            child.wait().await
        }
        _ = super::until(&mut stop, |s| *s) => {
            stop_child(&mut child, pid).await;
            shared.lock().pid = None;
            return None;
        }
    };
    // Nothing the runtime started outlives it.
    if let Some(pid) = pid {
        signal_group(pid, libc::SIGKILL);
    }
    let status = match status {
        Ok(s) => describe_status(&s),
        Err(e) => format!("wait failed: {e}"),
    };
    tracing::warn!(program, pid, %status, "Lambda runtime exited");
    let current = {
        let mut inner = shared.lock();
        inner.pid = None;
        inner.current.take()
    };
    // The event it held fails with the exit.
    if let Some(mut c) = current {
        if let Some(reply) = c.reply.take() {
            let _ = reply.send(Outcome::Error(exited(&c.id, &status)));
        }
    }
    Some(status)
}

/// Terminates the runtime gracefully, then forcibly.
async fn stop_child(child: &mut Child, pid: Option<u32>) {
    let Some(pid) = pid else {
        let _ = child.kill().await;
        return;
    };
    signal_group(pid, libc::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
    signal_group(pid, libc::SIGKILL);
}
