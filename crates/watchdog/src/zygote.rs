//! The client side of a pre-forked interpreter (zygote). Run as the upstream command
//! (`virga-watchdog --zygote SOCKET FALLBACK...`), it asks the zygote listening on SOCKET to
//! fork a runtime with this process's working directory, environment, stdout and stderr (the
//! descriptors travel with the request), then lives exactly as long as that runtime: it exits
//! with the runtime's exit code, and if it is killed the zygote kills the runtime. So the
//! watchdog supervises it like any upstream process, and the interpreter's start is not paid.
//! When no zygote answers, it runs FALLBACK (the template's normal command) in its place.

use std::io::{self, BufRead, BufReader};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;

/// Ask the zygote at `socket` for a runtime and wait for it; run `fallback` if there is none.
pub fn run(socket: &str, fallback: &[String]) -> i32 {
    let stream = match UnixStream::connect(socket).and_then(|s| request(&s).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("zygote at {socket} unavailable ({e}): starting {fallback:?}");
            let Some((program, args)) = fallback.split_first() else {
                return 127;
            };
            let err = std::process::Command::new(program).args(args).exec();
            eprintln!("cannot start {program}: {err}");
            return 127;
        }
    };
    // The runtime is up to the zygote now: wait for its exit code (or the zygote's end).
    let mut line = String::new();
    match BufReader::new(&stream).read_line(&mut line) {
        Ok(_) => line.trim().parse().unwrap_or(1),
        Err(_) => 1,
    }
}

/// Send the fork request: one JSON line, with our stdout and stderr attached.
fn request(stream: &UnixStream) -> io::Result<()> {
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let dir = std::env::current_dir()?;
    let mut msg = serde_json::json!({"dir": dir, "env": env}).to_string();
    msg.push('\n');
    send_with_fds(stream.as_raw_fd(), msg.as_bytes(), &[1, 2])
}

/// sendmsg(2) with the descriptors `fds` as SCM_RIGHTS, writing the rest of `data` after.
fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds) as u32;
    // SAFETY: the control buffer is sized by CMSG_SPACE for exactly `fds`; the header and
    // data pointers come from CMSG_FIRSTHDR/CMSG_DATA on that buffer; `data` outlives the call.
    let sent = unsafe {
        let space = libc::CMSG_SPACE(fd_bytes) as usize;
        let mut control = vec![0u8; space];
        let mut iov = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for the descriptors"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes) as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            fds.len(),
        );
        libc::sendmsg(sock, &msg, 0)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut rest = &data[sent as usize..];
    while !rest.is_empty() {
        // SAFETY: write(2) from a live slice.
        let n = unsafe { libc::write(sock, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        rest = &rest[n as usize..];
    }
    Ok(())
}
