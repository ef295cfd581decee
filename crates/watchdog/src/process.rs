//! Function process plumbing shared by the modes: building the command,
//! killing a whole process group, and forwarding the function's output to the
//! watchdog's stderr (with or without the of-watchdog style prefix).

use std::ffi::{CString, OsString};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;

use crate::config::Config;

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

/// A function process started for one request (leader of its own process group), with
/// our ends of its stdio pipes.
///
/// Cheaper than `tokio::process::Child` on the per-request path: no pidfd is opened nor
/// registered up front (a per-request process has almost always exited by the time its
/// output pipes close, so [`Running::wait`] is usually one `waitpid(WNOHANG)`), and a small
/// request body is written straight into the stdin pipe without registering it with the
/// reactor.
///
/// Dropped before it was reaped (exec_timeout, the caller went away), it kills the whole
/// group and reaps the leader in the background, like `kill_on_drop`.
pub struct Running {
    /// The leader, until it is reaped.
    pid: Option<libc::pid_t>,
    /// Our end of the function's stdin, when the body did not fit into the pipe at once.
    pub stdin: Option<tokio::net::unix::pipe::Sender>,
    /// Our end of the function's stdout.
    pub stdout: Option<tokio::net::unix::pipe::Receiver>,
    /// Our end of the function's stderr.
    pub stderr: Option<tokio::net::unix::pipe::Receiver>,
}

impl Running {
    /// Starts the function with `env` added to its environment, and hands it `input` on
    /// stdin: as much as the pipe takes right away, the rest through [`Running::stdin`]
    /// (the returned count is what is left). Stdin is closed at once when everything fit.
    pub fn spawn(
        spawner: &Spawner,
        env: &[(OsString, OsString)],
        input: &[u8],
    ) -> std::io::Result<(Running, usize)> {
        let spawned = spawner.spawn(env)?;
        let mut running = Running {
            pid: Some(spawned.pid),
            stdin: None,
            stdout: None,
            stderr: None,
        };
        let written = write_nonblocking(&spawned.stdin, input);
        if written < input.len() {
            running.stdin = Some(tokio::net::unix::pipe::Sender::from_owned_fd_unchecked(
                spawned.stdin,
            )?);
        }
        running.stdout = Some(tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(
            spawned.stdout,
        )?);
        running.stderr = Some(tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(
            spawned.stderr,
        )?);
        Ok((running, input.len() - written))
    }

    /// Process id of the leader (and process group id), until it is reaped.
    pub fn id(&self) -> Option<u32> {
        self.pid.and_then(|p| u32::try_from(p).ok())
    }

    /// Waits for the leader to exit and reaps it.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let pid = self
            .pid
            .ok_or_else(|| std::io::Error::other("already reaped"))?;
        let status = match try_wait(pid)? {
            Some(status) => status,
            None => wait_for_exit(pid).await?,
        };
        self.pid = None;
        Ok(status)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let Some(pid) = self.pid.take() else {
            return;
        };
        // SAFETY: kill(2) has no memory-safety preconditions; pid is our unreaped child,
        // so it (and its group id) cannot have been reused.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        if let Ok(Some(_)) = try_wait(pid) {
            return;
        }
        // Reap it once the SIGKILL lands, without blocking the caller.
        let reap = move || {
            let mut status = 0;
            // SAFETY: waitpid on our own child, with a valid status pointer.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(reap);
            }
            Err(_) => {
                std::thread::spawn(reap);
            }
        }
    }
}

/// `waitpid(pid, WNOHANG)`: the exit status if the child has exited (it is then reaped).
fn try_wait(pid: libc::pid_t) -> std::io::Result<Option<std::process::ExitStatus>> {
    use std::os::unix::process::ExitStatusExt;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(Some(std::process::ExitStatus::from_raw(status)));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Waits (asynchronously) until child `pid` exits and reaps it: readiness of a pidfd, or
/// polling where pidfds are unavailable.
async fn wait_for_exit(pid: libc::pid_t) -> std::io::Result<std::process::ExitStatus> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    if fd >= 0 {
        // SAFETY: see above; the fd is open and owned by nobody else.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: the OwnedFd stays open, and is the same fd, for as long as the AsyncFd lives.
        let pidfd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
        }?;
        loop {
            if let Some(status) = try_wait(pid)? {
                return Ok(status);
            }
            pidfd.readable().await?.clear_ready();
        }
    }
    let mut delay = std::time::Duration::from_micros(200);
    loop {
        if let Some(status) = try_wait(pid)? {
            return Ok(status);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_millis(20));
    }
}

/// Writes as much of `data` as the (non-blocking) pipe takes now; returns how much.
/// Errors count as everything written: EPIPE just means the function did not read its input.
fn write_nonblocking(fd: &OwnedFd, data: &[u8]) -> usize {
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: writes from a live slice to an fd we own.
        let n = unsafe { libc::write(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
        if n >= 0 {
            done += n as usize;
            continue;
        }
        match std::io::Error::last_os_error().kind() {
            std::io::ErrorKind::Interrupted => continue,
            std::io::ErrorKind::WouldBlock => return done,
            _ => return data.len(),
        }
    }
    done
}

/// Starts the function program with posix_spawn(3) (vfork + exec: the cost does not grow
/// with the watchdog's memory), with argv and the inherited environment converted to C
/// strings once, at startup, instead of on every request.
#[derive(Debug)]
pub struct Spawner {
    path: CString,
    argv: Vec<CString>,
    /// `NAME=value` of the watchdog's environment when the spawner was built.
    env: Vec<CString>,
}

/// A just-started process: its pid and our ends of its stdio pipes (non-blocking).
struct Spawned {
    pid: libc::pid_t,
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl Spawner {
    /// Runs `path` with `argv` (argv[0] included) and the current environment.
    pub fn new(path: &Path, argv: &[String]) -> Spawner {
        // Nothing from the environment or the configuration holds a NUL byte; were one
        // there, the string is cut at it rather than refused.
        let c = |bytes: &[u8]| {
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            CString::new(&bytes[..end]).unwrap_or_default()
        };
        let env = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c(&kv)
            })
            .collect();
        Spawner {
            path: c(path.as_os_str().as_bytes()),
            argv: argv.iter().map(|a| c(a.as_bytes())).collect(),
            env,
        }
    }

    /// Starts the program with piped stdio in a new process group, with `extra` added to
    /// (or replacing entries of) the environment; for a repeated name the last one wins.
    fn spawn(&self, extra: &[(OsString, OsString)]) -> std::io::Result<Spawned> {
        let mut added: Vec<CString> = Vec::with_capacity(extra.len());
        for (i, (k, v)) in extra.iter().enumerate() {
            if extra[i + 1..].iter().any(|(later, _)| later == k) {
                continue;
            }
            let mut kv = Vec::with_capacity(k.len() + v.len() + 2);
            kv.extend_from_slice(k.as_bytes());
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            added.push(CString::new(kv)?);
        }
        let mut envp: Vec<*const libc::c_char> =
            Vec::with_capacity(self.env.len() + added.len() + 1);
        for var in &self.env {
            let bytes = var.as_bytes();
            let name = &bytes[..bytes.iter().position(|b| *b == b'=').unwrap_or(0)];
            if !extra.iter().any(|(k, _)| k.as_bytes() == name) {
                envp.push(var.as_ptr());
            }
        }
        envp.extend(added.iter().map(|v| v.as_ptr()));
        envp.push(std::ptr::null());
        let mut argv: Vec<*const libc::c_char> = Vec::with_capacity(self.argv.len() + 1);
        argv.extend(self.argv.iter().map(|a| a.as_ptr()));
        argv.push(std::ptr::null());

        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let mut pid: libc::pid_t = 0;
        // SAFETY: the attribute and file-action objects are initialised before use and
        // destroyed after; every pointer passed to posix_spawn (path, argv, envp and the
        // strings they point to, the fds) stays valid until it returns.
        let rc = unsafe {
            let mut actions = std::mem::MaybeUninit::<libc::posix_spawn_file_actions_t>::uninit();
            let mut attr = std::mem::MaybeUninit::<libc::posix_spawnattr_t>::uninit();
            let mut rc = libc::posix_spawn_file_actions_init(actions.as_mut_ptr());
            if rc != 0 {
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            rc = libc::posix_spawnattr_init(attr.as_mut_ptr());
            if rc != 0 {
                libc::posix_spawn_file_actions_destroy(actions.as_mut_ptr());
                return Err(std::io::Error::from_raw_os_error(rc));
            }
            let a = actions.as_mut_ptr();
            let at = attr.as_mut_ptr();
            let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(empty.as_mut_ptr());
            let mut default = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(default.as_mut_ptr());
            // Rust ignores SIGPIPE; the function must start with the default disposition.
            libc::sigaddset(default.as_mut_ptr(), libc::SIGPIPE);
            for r in [
                libc::posix_spawn_file_actions_adddup2(a, stdin_r.as_raw_fd(), 0),
                libc::posix_spawn_file_actions_adddup2(a, stdout_w.as_raw_fd(), 1),
                libc::posix_spawn_file_actions_adddup2(a, stderr_w.as_raw_fd(), 2),
                libc::posix_spawnattr_setpgroup(at, 0),
                libc::posix_spawnattr_setsigmask(at, empty.as_ptr()),
                libc::posix_spawnattr_setsigdefault(at, default.as_ptr()),
                libc::posix_spawnattr_setflags(
                    at,
                    (libc::POSIX_SPAWN_SETPGROUP
                        | libc::POSIX_SPAWN_SETSIGMASK
                        | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
                ),
            ] {
                if rc == 0 {
                    rc = r;
                }
            }
            if rc == 0 {
                rc = libc::posix_spawn(
                    &mut pid,
                    self.path.as_ptr(),
                    a,
                    at,
                    argv.as_ptr() as *const *mut libc::c_char,
                    envp.as_ptr() as *const *mut libc::c_char,
                );
            }
            libc::posix_spawnattr_destroy(at);
            libc::posix_spawn_file_actions_destroy(a);
            rc
        };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        // The child's ends close here; ours go non-blocking (a pipe's two ends are
        // separate open files, so the child's stay blocking).
        drop((stdin_r, stdout_w, stderr_w));
        for fd in [&stdin_w, &stdout_r, &stderr_r] {
            set_nonblocking(fd)?;
        }
        Ok(Spawned {
            pid,
            stdin: stdin_w,
            stdout: stdout_r,
            stderr: stderr_r,
        })
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fcntl on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

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
