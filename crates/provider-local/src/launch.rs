//! How an instance's watchdog is started: as a plain child process (the fallback) or inside
//! a runc sandbox. Both give the instance task a command to spawn; the sandbox also owns the
//! container, network and cgroups, removed when the `Launch` is dropped (whatever path drops
//! it: exit, stop, a cancelled start), and can tell about OOM kills.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;

use tokio::process::Command;

use crate::sandbox::{Runc, Sandbox};
use crate::spec::InstanceSpec;
use crate::ProviderConfig;

/// What an instance runs in.
pub(crate) enum Launch {
    /// A plain process on the host.
    Process,
    /// A runc container.
    Sandbox(Arc<Runc>, Sandbox),
}

impl Launch {
    /// Prepare instance `id` running `spec` (plus the variables `extra`) and the command that
    /// starts it; with `zygote` (process isolation only), its runtime is forked by the zygote
    /// listening there.
    pub(crate) async fn prepare(
        cfg: &ProviderConfig,
        spec: &Arc<InstanceSpec>,
        id: &str,
        zygote: Option<&Path>,
        extra: &[(String, String)],
    ) -> Result<(Launch, Command), String> {
        let (launch, mut cmd) = match &cfg.sandbox {
            None => {
                let mut cmd = Command::new(&cfg.watchdog);
                cmd.current_dir(&spec.workdir);
                (Launch::Process, cmd)
            }
            Some(rt) => {
                let (rt2, spec2, id2) = (rt.clone(), spec.clone(), id.to_string());
                let extra2 = extra.to_vec();
                let sb = tokio::task::spawn_blocking(move || rt2.create(&id2, &spec2, &extra2))
                    .await
                    .map_err(|e| format!("sandbox setup panicked: {e}"))?
                    .map_err(|e| format!("cannot create sandbox: {e}"))?;
                let cmd = rt.command(&sb);
                (Launch::Sandbox(rt.clone(), sb), cmd)
            }
        };
        cmd.env_clear()
            .envs(inherited_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Launch::Process = launch {
            cmd.env("PATH", process_path(cfg))
                .envs(&spec.env)
                .envs(extra.iter().cloned())
                .env("port", "0");
            if spec.env.get("mode").map(String::as_str) == Some("http") {
                let upstream = spec.env.get("upstream_url").cloned().unwrap_or_default();
                let (url, port) = with_free_port(&upstream)?;
                // OpenFaaS's node templates listen on $http_port.
                cmd.env("upstream_url", url)
                    .env("http_port", port.to_string());
            }
            if let (Some(sock), Some(fprocess)) = (zygote, spec.env.get("fprocess")) {
                // fprocess is split with shell quoting: quote the paths it is prefixed with.
                let (wd, sock) = (cfg.watchdog.to_string_lossy(), sock.to_string_lossy());
                if let (Ok(wd), Ok(sock)) = (shlex::try_quote(&wd), shlex::try_quote(&sock)) {
                    cmd.env("fprocess", format!("{wd} --zygote {sock} {fprocess}"));
                }
            }
        }
        // SAFETY: prctl is async-signal-safe; the child dies with the platform.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Ok((launch, cmd))
    }

    /// Where to reach the watchdog that printed `printed` as its listening address.
    pub(crate) fn reach(&self, printed: SocketAddr) -> SocketAddr {
        match self {
            Launch::Process => printed,
            Launch::Sandbox(_, sb) => SocketAddr::new(sb.ip().into(), printed.port()),
        }
    }

    /// OOM kills so far in the instance's memory cgroup (0 outside a sandbox).
    pub(crate) fn oom_kills(&self) -> u64 {
        match self {
            Launch::Process => 0,
            Launch::Sandbox(rt, sb) => rt.oom_kills(sb),
        }
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        if let Launch::Sandbox(rt, sb) = self {
            // runc and ip block: remove the sandbox off the async threads.
            let (rt, sb) = (rt.clone(), sb.clone());
            std::thread::spawn(move || {
                rt.kill(&sb);
                rt.destroy(&sb);
            });
        }
    }
}

/// Variables passed through from the platform's environment; the rest is not the function's.
pub(crate) fn inherited_env() -> Vec<(String, String)> {
    ["PATH", "LANG", "LC_ALL", "TZ"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .chain([("HOME".to_string(), "/tmp".to_string())])
        .collect()
}

/// The platform's PATH, then the run directory's `bin/` (where `python` names python3 when
/// the host has no `python`, as OpenFaaS templates' `fprocess: python index.py` expects).
fn process_path(cfg: &ProviderConfig) -> String {
    let host = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    format!("{host}:{}", cfg.run_dir.join("bin").display())
}

/// Make `run_dir/bin/python` name the host's python3 if the host has no `python` on PATH.
pub(crate) fn provide_python(run_dir: &Path) {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    };
    if on_path("python").is_some() {
        return;
    }
    let Some(python3) = on_path("python3") else {
        return;
    };
    let bin = run_dir.join("bin");
    if let Err(e) = std::fs::create_dir_all(&bin)
        .and_then(|()| std::os::unix::fs::symlink(&python3, bin.join("python")))
    {
        tracing::warn!("cannot provide `python` for templates that call it: {e}");
    }
}

/// `upstream_url` with its port replaced by a free one, so replicas do not collide; and
/// that port.
fn with_free_port(upstream: &str) -> Result<(String, u16), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let rest = upstream.strip_prefix("http://").unwrap_or("127.0.0.1:5000");
    let path = rest.find('/').map(|i| &rest[i..]).unwrap_or("");
    Ok((format!("http://127.0.0.1:{port}{path}"), port))
}
