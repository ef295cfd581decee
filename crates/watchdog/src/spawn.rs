//! Starting a per-request function process cheaply: [`Spawner`] prepares argv and envp once
//! and starts each process with posix_spawn(3); [`Running`] is one such process with our ends
//! of its stdio pipes, reaped without a pidfd in the common case.

use std::ffi::{CStr, CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

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
        let added = extra_vars(extra)?;
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
        let stdio = [&stdin_r, &stdout_w, &stderr_w].map(|fd| fd.as_raw_fd());
        // SAFETY: argv and envp are NUL-terminated arrays of pointers into self.argv,
        // self.env and added, which outlive the call; the fds are open until after it.
        let pid = unsafe { posix_spawn(&self.path, &argv, &envp, stdio)? };
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

/// `extra` as `NAME=value` strings, keeping only the last of a repeated name.
fn extra_vars(extra: &[(OsString, OsString)]) -> std::io::Result<Vec<CString>> {
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
    Ok(added)
}

/// posix_spawn of `path` with `stdio` as fds 0, 1 and 2, in a new process group, with an
/// empty signal mask and SIGPIPE at its default disposition; the child's pid.
///
/// # Safety
///
/// `argv` and `envp` must be NULL-terminated arrays of pointers to NUL-terminated strings
/// that stay valid for the call, and `stdio` open fds.
unsafe fn posix_spawn(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    stdio: [RawFd; 3],
) -> std::io::Result<libc::pid_t> {
    let mut pid: libc::pid_t = 0;
    // SAFETY: the attribute and file-action objects are initialised before use and
    // destroyed after; every pointer passed to posix_spawn (path, argv, envp and the
    // strings they point to, the fds) stays valid until it returns (the caller's promise).
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
            libc::posix_spawn_file_actions_adddup2(a, stdio[0], 0),
            libc::posix_spawn_file_actions_adddup2(a, stdio[1], 1),
            libc::posix_spawn_file_actions_adddup2(a, stdio[2], 2),
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
                path.as_ptr(),
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
    Ok(pid)
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
