//! Host processes the platform starts (a watchdog, the OCI runtime running one, a zygote):
//! the rules every one of them follows, and the [`Life`] of one that is an instance.

use std::ffi::OsStr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::process::{Child, Command};

use crate::isolation::{Life, Output};

/// How long a stopped instance gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);

/// A command for `program` that gets only the platform's locale and PATH from its
/// environment, no stdin, piped stdout and stderr, a process group of its own, and dies with
/// the platform.
pub(crate) fn command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .envs(inherited_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; the child dies with the platform.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// Variables passed through from the platform's environment; the rest is not the function's.
fn inherited_env() -> Vec<(String, String)> {
    ["PATH", "LANG", "LC_ALL", "TZ"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .chain([("HOME".to_string(), "/tmp".to_string())])
        .collect()
}

/// Spawn `cmd` (made by [`command`]) as an instance: its life, stdout and stderr.
pub(crate) fn spawn(mut cmd: Command) -> Result<(ChildLife, Output, Option<Output>), String> {
    let mut child = cmd.spawn().map_err(|e| {
        let program = cmd.as_std().get_program().to_string_lossy().into_owned();
        format!("cannot start {program}: {e}")
    })?;
    let stdout = child.stdout.take().ok_or("stdout not captured")?;
    let stderr = child.stderr.take().map(|e| Box::new(e) as Output);
    Ok((ChildLife(child), Box::new(stdout), stderr))
}

/// The life of an instance that is a child process (and its process group).
pub(crate) struct ChildLife(Child);

impl Life for ChildLife {
    fn ended(&mut self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            match self.0.wait().await {
                Ok(s) => format!("watchdog exited ({s})"),
                Err(e) => format!("watchdog wait failed: {e}"),
            }
        })
    }

    fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// SIGTERM the process group, then SIGKILL it if it has not exited in time.
    fn stop(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(pid) = self.0.id() {
                signal_group(pid, libc::SIGTERM);
                if tokio::time::timeout(GRACE, self.0.wait()).await.is_err() {
                    signal_group(pid, libc::SIGKILL);
                }
            }
            let _ = self.0.wait().await;
        })
    }

    fn kill(&mut self) {
        let _ = self.0.start_kill();
    }

    fn pid(&self) -> Option<u32> {
        self.0.id()
    }
}

fn signal_group(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on our own child's process group; errors (already gone) are harmless.
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

/// Wait until none of `pids` exists any more, at most `limit`; then kill what is left.
pub(crate) async fn wait_gone(pids: &[u32], limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        // SAFETY: signal 0 only checks existence.
        let alive = pids
            .iter()
            .any(|&p| unsafe { libc::kill(p as libc::pid_t, 0) } == 0);
        if !alive {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for &p in pids {
        signal_group(p, libc::SIGKILL);
    }
}
