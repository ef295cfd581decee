//! A minimal init for when the watchdog is PID 1 of a container's PID namespace. Orphaned
//! processes (what a function forked and left behind) are re-parented to PID 1, and a PID 1
//! that does not reap them fills the sandbox's pids limit with zombies. So PID 1 forks: the
//! child becomes the real watchdog, the parent forwards signals to it and reaps every exited
//! process until the watchdog itself exits, then exits with its status.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static CHILD: AtomicI32 = AtomicI32::new(0);
/// Set in the watchdog forked by a PID 1: it then runs in a PID namespace of its own.
static OWN_NAMESPACE: AtomicBool = AtomicBool::new(false);

/// Whether this watchdog was forked by the PID 1 of its own PID namespace (a sandbox), so
/// every other process it can see is the function's and `kill(-1)` reaches only those.
pub fn owns_pid_namespace() -> bool {
    OWN_NAMESPACE.load(Ordering::Relaxed)
}

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

/// When this process is PID 1, become the reaper and return the exit code to exit with;
/// in the forked child (and when not PID 1) return `None` to go on as the watchdog.
/// Call before any thread is started.
pub fn run_if_pid1() -> Option<i32> {
    // SAFETY: plain libc calls on this process, before any other thread exists.
    unsafe {
        if libc::getpid() != 1 {
            return None;
        }
        // The parent outside the namespace (the OCI runtime) going away ends the sandbox.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        let child = libc::fork();
        if child < 0 {
            // Cannot fork: serve without a reaper rather than not at all.
            OWN_NAMESPACE.store(true, Ordering::Relaxed);
            return None;
        }
        if child == 0 {
            OWN_NAMESPACE.store(true, Ordering::Relaxed);
            return None;
        }
        CHILD.store(child, Ordering::SeqCst);
        for sig in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::signal(
                sig,
                forward as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
        loop {
            let mut status = 0;
            let pid = libc::waitpid(-1, &mut status, 0);
            if pid == child {
                if libc::WIFEXITED(status) {
                    return Some(libc::WEXITSTATUS(status));
                }
                return Some(128 + libc::WTERMSIG(status));
            }
            if pid < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
                return Some(1);
            }
        }
    }
}
