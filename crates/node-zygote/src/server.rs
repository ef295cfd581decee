//! The zygote's accept loop: read a request and its two descriptors, fork, and tie the
//! child's life to the client's connection. Only the forked child ever returns.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use crate::HIGH_FD;

/// Largest request line accepted (the environment of one runtime).
const MAX_REQUEST: usize = 1 << 20;

/// Listens on `path` and forks a runtime per request; returns only in a child, with the
/// request line, its stdout and stderr already in place and the zygote's descriptors closed.
pub(crate) fn serve(path: &str) -> io::Result<String> {
    let listener = listen(path)?;
    write_all(1, b"virga-zygote ready\n")?;
    let me = std::process::id() as libc::pid_t;
    loop {
        // SAFETY: accept4 on our listening socket; a non-negative result is a new fd we own.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // SAFETY: fd was just returned by accept4 and is owned by nobody else.
        let conn = move_high(unsafe { OwnedFd::from_raw_fd(fd) });
        let (request, fds) = match read_request(&conn) {
            Ok(r) => r,
            Err(e) => {
                eprint_line(&format!("zygote: bad request: {e}"));
                continue;
            }
        };
        inherit_all_mappings();
        // SAFETY: fork(2); the child only makes system calls until it returns to node, which
        // then rebuilds its event loop (see the crate docs).
        match unsafe { libc::fork() } {
            0 => {
                child_setup(me, fds, [listener.into_raw_fd(), conn.into_raw_fd()]);
                return Ok(request);
            }
            -1 => eprint_line(&format!("zygote: fork: {}", io::Error::last_os_error())),
            pid => watch(Arc::new(conn), pid),
        }
        // `fds` (the client's stdout and stderr) are closed here in the zygote.
    }
}

/// Undoes `MADV_DONTFORK`, which V8 sets on its heap's memory: a child without the heap
/// cannot run JavaScript. Mappings that refuse (special ones like `[vsyscall]`) are left alone.
fn inherit_all_mappings() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let range = line.split_whitespace().next().unwrap_or("");
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: MADV_DOFORK only changes whether a mapping is copied by fork(2).
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DOFORK) };
    }
}

/// Binds and listens on `path` (mode 0600), replacing a stale socket file.
fn listen(path: &str) -> io::Result<OwnedFd> {
    let _ = std::fs::remove_file(path);
    let bytes = path.as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::other("socket path too long"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2); a non-negative result is a new fd we own.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: see above.
    let sock = move_high(unsafe { OwnedFd::from_raw_fd(fd) });
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_un of `len` bytes.
    if unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    // SAFETY: listen(2) on our socket.
    if unsafe { libc::listen(sock.as_raw_fd(), 64) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// Moves `fd` to a number at or above [`HIGH_FD`] (close-on-exec), where the forked child
/// finds and closes it; keeps it where it is if the descriptor limit is lower.
fn move_high(fd: OwnedFd) -> OwnedFd {
    // SAFETY: F_DUPFD_CLOEXEC duplicates an fd we own; a non-negative result is ours.
    let high = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HIGH_FD) };
    if high < 0 {
        return fd;
    }
    // SAFETY: see above.
    unsafe { OwnedFd::from_raw_fd(high) }
}

/// Reads one request line and the two descriptors sent with it.
fn read_request(conn: &OwnedFd) -> io::Result<(String, Vec<OwnedFd>)> {
    let mut data = Vec::new();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !data.ends_with(b"\n") {
        if data.len() > MAX_REQUEST {
            return Err(io::Error::other("request too large"));
        }
        let n = recv_with_fds(conn.as_raw_fd(), &mut buf, &mut fds)?;
        if n == 0 {
            return Err(io::Error::other("request cut short"));
        }
        data.extend_from_slice(&buf[..n]);
    }
    if fds.len() != 2 {
        return Err(io::Error::other("expected stdout and stderr descriptors"));
    }
    let line = String::from_utf8(data).map_err(|_| io::Error::other("request is not UTF-8"))?;
    Ok((line, fds))
}

/// recvmsg(2) into `buf`, appending any descriptors received to `fds`.
fn recv_with_fds(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    const MAX_FDS: usize = 4;
    let fd_bytes = (MAX_FDS * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: the control buffer is sized by CMSG_SPACE for MAX_FDS descriptors; headers are
    // walked with CMSG_FIRSTHDR/CMSG_NXTHDR inside it; received fds are new and ours.
    unsafe {
        let space = libc::CMSG_SPACE(fd_bytes) as usize;
        let mut control = vec![0u8; space];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = loop {
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        Ok(n)
    }
}

/// In the forked child: die with the zygote, lead a new session, take the client's stdout
/// and stderr, and close the zygote's descriptors: `own` (its listener and this request's
/// connection) and every other connection it holds (all at or above [`HIGH_FD`]).
fn child_setup(zygote: libc::pid_t, fds: Vec<OwnedFd>, own: [RawFd; 2]) {
    // SAFETY: plain system calls on our own process and descriptors; `own` were released
    // from their owners, and the connections above HIGH_FD belong to zygote threads that do
    // not exist in this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != zygote {
            libc::_exit(1);
        }
        libc::setsid();
        libc::dup2(fds[0].as_raw_fd(), 1);
        libc::dup2(fds[1].as_raw_fd(), 2);
        libc::syscall(libc::SYS_close_range, HIGH_FD as u32, u32::MAX, 0u32);
        for fd in own.into_iter().filter(|fd| *fd < HIGH_FD) {
            libc::close(fd);
        }
    }
    drop(fds);
}

/// In the zygote: reap child `pid` and report its exit code on `conn`; kill its group when
/// the client hangs up first.
///
/// The leader is reaped under `reaped`'s lock after its group is killed, so the hang-up side
/// never signals a process group id that could have been reused.
fn watch(conn: Arc<OwnedFd>, pid: libc::pid_t) {
    let reaped = Arc::new(Mutex::new(false));
    let (reaper, reaper_flag) = (conn.clone(), reaped.clone());
    let reap = move || {
        // SAFETY: waitid/waitpid on our own child with valid pointers; kill(2) of the group
        // it leads (it called setsid), whose id stays ours until the leader is reaped.
        let status = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            while libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            ) < 0
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
            let mut done = reaper_flag.lock().unwrap_or_else(|e| e.into_inner());
            libc::kill(-pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            *done = true;
            status
        };
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        let _ = write_all(reaper.as_raw_fd(), format!("{code}\n").as_bytes());
        // SAFETY: shutdown(2) on a socket we hold.
        unsafe { libc::shutdown(reaper.as_raw_fd(), libc::SHUT_RDWR) };
    };
    let hangup = move || {
        let mut buf = [0u8; 1024];
        // SAFETY: read(2) into a live buffer from a socket we hold.
        while unsafe { libc::read(conn.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        if !*reaped.lock().unwrap_or_else(|e| e.into_inner()) {
            // SAFETY: kill(2) of the group the unreaped child leads.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    };
    for (name, job) in [
        ("reap", Box::new(reap) as Box<dyn FnOnce() + Send>),
        ("hangup", Box::new(hangup)),
    ] {
        if let Err(e) = std::thread::Builder::new()
            .name(format!("zygote-{name}"))
            .spawn(job)
        {
            eprint_line(&format!("zygote: no thread to watch runtime {pid}: {e}"));
            // SAFETY: kill(2) of the group the unreaped child leads.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}

/// write(2) all of `data` to `fd`.
fn write_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: write(2) from a live slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        data = &data[n as usize..];
    }
    Ok(())
}

/// One line on the zygote's stderr (the platform logs it).
fn eprint_line(msg: &str) {
    let _ = write_all(2, format!("{msg}\n").as_bytes());
}
