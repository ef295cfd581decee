//! [`Runc`] as the provider's isolation: a start creates the sandbox (bundle, network, views)
//! off the async threads and runs it with `runc run` in the foreground, whose life is the
//! instance's; the sandbox is removed when its [`Handle`] is dropped, whatever path drops it
//! (exit, stop, a cancelled or failed start).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::oci::{APP_UID, CODE_PATH};
use super::{cgroup, Runc, Sandbox};
use crate::child;
use crate::isolation::{Handle, Isolation, Start, Started};
use crate::spec::{InstanceSpec, View};

impl Isolation for Runc {
    fn name(&self) -> &'static str {
        "runc"
    }

    fn view(&self) -> View {
        View {
            code: Some(CODE_PATH),
            secrets_owner: Some(APP_UID),
        }
    }

    fn images(&self) -> bool {
        true
    }

    fn zygotes(&self) -> bool {
        // Every instance is its own sandbox (namespaces, cgroup); a forked child would share
        // its parent's.
        false
    }

    fn start(self: Arc<Self>, start: Start) -> BoxFuture<'static, Result<Started, String>> {
        Box::pin(async move {
            let rt = self.clone();
            // runc, ip and mount block: create the sandbox off the async threads.
            let sb = tokio::task::spawn_blocking(move || {
                rt.create(&start.id, &start.spec, &start.extra)
            })
            .await
            .map_err(|e| format!("sandbox setup panicked: {e}"))?
            .map_err(|e| format!("cannot create sandbox: {e}"))?;
            let contained = Contained { rt: self, sb };
            let cmd = contained.rt.command(&contained.sb);
            let (life, stdout, stderr) = child::spawn(cmd)?;
            Ok(Started {
                life: Box::new(life),
                handle: Arc::new(contained),
                stdout,
                stderr,
            })
        })
    }

    fn shutdown(&self) {
        self.remove_all();
    }
}

/// A created sandbox, removed when dropped.
struct Contained {
    rt: Arc<Runc>,
    sb: Sandbox,
}

impl Handle for Contained {
    fn reach(&self, printed: SocketAddr) -> SocketAddr {
        // The watchdog listens on all of its namespace's addresses; the host reaches it at
        // its end of the veth pair.
        SocketAddr::new(self.sb.net.ip.into(), printed.port())
    }

    fn oom_kills(&self) -> u64 {
        cgroup::oom_kills(&self.rt.key, &self.sb.id)
    }

    fn cpu_seconds(&self) -> f64 {
        cgroup::cpu_seconds(&self.rt.key, &self.sb.id)
    }

    fn handoff(&self) -> Option<&std::path::Path> {
        self.sb.handoff.as_deref()
    }

    fn attach(
        &self,
        spec: &InstanceSpec,
        env: &mut BTreeMap<String, String>,
    ) -> Result<PathBuf, String> {
        self.rt.bind(&self.sb, spec)?;
        env.insert(
            "secret_mount_path".into(),
            virga_types::SECRETS_MOUNT.into(),
        );
        Ok(PathBuf::from(CODE_PATH))
    }
}

impl Drop for Contained {
    fn drop(&mut self) {
        // runc and ip block: remove the sandbox off the async threads.
        let (rt, sb) = (self.rt.clone(), self.sb.clone());
        std::thread::spawn(move || {
            rt.kill(&sb);
            rt.destroy(&sb);
        });
    }
}
