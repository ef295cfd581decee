//! Function process settings and plumbing shared by the modes: the command, killing a whole
//! process group, the per-request settings and exit descriptions. Starting per-request
//! processes is in `spawn`, forwarding their output in `logger`.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use tokio::process::Command;

use crate::config::Config;
use crate::logger::LineLogger;
use crate::spawn::Spawner;

/// Everything needed to start a per-request function process.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// Command line (argv), never empty.
    pub argv: Arc<[String]>,
    /// `argv[0]` resolved against PATH once, so each spawn skips the PATH search.
    pub program_path: Arc<Path>,
    /// Prefix function log lines.
    pub prefix_logs: bool,
    /// Maximum log line length before splitting.
    pub log_buffer_size: usize,
    /// Starts per-request processes (serializing mode).
    pub spawner: Arc<Spawner>,
}

impl FunctionSpec {
    /// Extracts the process settings from the configuration.
    pub fn from_config(config: &Config) -> Self {
        let program = config.fprocess.first().map(String::as_str).unwrap_or("");
        let program_path: Arc<Path> = resolve_program(program).into();
        FunctionSpec {
            spawner: Arc::new(Spawner::new(&program_path, &config.fprocess)),
            program_path,
            argv: config.fprocess.clone().into(),
            prefix_logs: config.prefix_logs,
            log_buffer_size: config.log_buffer_size,
        }
    }

    /// Program name, for messages.
    pub fn program(&self) -> &str {
        self.argv.first().map(String::as_str).unwrap_or("")
    }

    /// A command with piped stdio in its own process group, plus `env` added to
    /// the inherited environment.
    pub fn command(&self, env: Vec<(OsString, OsString)>) -> Command {
        let mut cmd = Command::new(&*self.program_path);
        cmd.arg0(self.program())
            .args(self.argv.iter().skip(1))
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        cmd
    }

    /// The command of a long-running function process (http and lambda modes): no stdin,
    /// piped output, its own process group, killed with the watchdog even by SIGKILL.
    pub fn long_running_command(&self) -> Command {
        let mut cmd = Command::new(&*self.program_path);
        cmd.arg0(self.program())
            .args(self.argv.iter().skip(1))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        #[cfg(target_os = "linux")]
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe.
        unsafe {
            // The process must not outlive a watchdog that is killed outright.
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd
    }
}

/// Finds `program` in PATH (as execvp would); returns it unchanged when it
/// contains a `/` or is not found (the spawn then reports the error).
pub fn resolve_program(program: &str) -> PathBuf {
    if program.contains('/') || program.is_empty() {
        return PathBuf::from(program);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .unwrap_or_else(|| PathBuf::from(program))
}

/// Sends `signal` to the process group led by `pid`.
pub fn signal_group(pid: u32, signal: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    if pid > 0 {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// Kills a process group with SIGKILL when dropped, unless disarmed. Used so
/// that timeouts and aborted requests never leave function processes behind.
pub struct GroupKill {
    pid: Option<u32>,
}

impl GroupKill {
    /// Guards the group led by `pid`.
    pub fn new(pid: Option<u32>) -> Self {
        GroupKill { pid }
    }

    /// Kills the group now.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            signal_group(pid, libc::SIGKILL);
        }
    }

    /// Forgets the group (the leader exited normally).
    pub fn disarm(&mut self) {
        self.pid = None;
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Settings shared by the per-request modes (serializing and streaming).
#[derive(Debug, Clone)]
pub struct ExecSettings {
    /// The function command and log settings.
    pub spec: FunctionSpec,
    /// Per-request execution limit.
    pub exec_timeout: Option<std::time::Duration>,
    /// Limit for reading the request body.
    pub read_timeout: Option<std::time::Duration>,
    /// Configured response Content-Type.
    pub content_type: Option<hyper::header::HeaderValue>,
    /// Whether to set `Http_*` variables.
    pub cgi_headers: bool,
}

impl ExecSettings {
    /// Extracts the per-request settings from the configuration.
    pub fn from_config(config: &Config) -> Self {
        ExecSettings {
            spec: FunctionSpec::from_config(config),
            exec_timeout: config.exec_timeout,
            read_timeout: config.read_timeout,
            content_type: config
                .content_type
                .as_deref()
                .and_then(|v| hyper::header::HeaderValue::from_str(v).ok()),
            cgi_headers: config.cgi_headers,
        }
    }

    /// Response Content-Type: the configured one, else the caller's (classic watchdog).
    pub fn response_content_type(
        &self,
        request: &hyper::HeaderMap,
    ) -> Option<hyper::header::HeaderValue> {
        self.content_type
            .clone()
            .or_else(|| request.get(hyper::header::CONTENT_TYPE).cloned())
    }

    /// Logger for the function's stderr.
    pub fn stderr_logger(&self) -> LineLogger {
        LineLogger {
            name: "stderr",
            prefix: self.spec.prefix_logs,
            max_line: self.spec.log_buffer_size,
        }
    }
}

/// How much stderr is kept for an error response body.
pub const STDERR_CAPTURE: usize = 64 * 1024;

/// Describes an exit status for messages (`exit status 3`, `signal 9`).
pub fn describe_status(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_programs_on_path() {
        let sh = resolve_program("sh");
        assert!(sh.is_absolute(), "{sh:?}");
        assert_eq!(resolve_program("./x"), PathBuf::from("./x"));
        assert_eq!(
            resolve_program("no-such-program-virga"),
            PathBuf::from("no-such-program-virga")
        );
    }

    #[tokio::test]
    async fn forward_captures_output() {
        let logger = LineLogger {
            name: "stderr",
            prefix: true,
            max_line: 4,
        };
        let data: &[u8] = b"line one\nsecond\n";
        let captured = logger.forward(data, 10).await.unwrap();
        assert_eq!(captured, b"line one\ns");
    }
}
