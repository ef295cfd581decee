//! An image function's sandbox: its root is an overlay of the image's layers (read-only,
//! shared) over a writable upper directory of its own in the sandbox bundle (removed with
//! it), made read-only by runc when the function asks for `readOnlyRootFilesystem`. The
//! process is the image's, as its user; the protections are every sandbox's. A Lambda
//! image's process is the platform's watchdog instead, from a read-only view of its tree
//! (the binary, its libraries and loader: `watchdog_files`) at `/virga`, gathered once per
//! platform by the first sandbox that needs it; the image's process is its runtime.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::oci::{self, ImageLayout};
use super::{io, mounts, private_dir, write_spec, Runc, Sandbox, ROOTFS, VIEWS};
use crate::image::ImageRoot;
use crate::spec::InstanceSpec;
use crate::watchdog_files;

impl Runc {
    /// Mount the instance's root and secrets view and write its `config.json`.
    pub(super) fn write_image_config(
        &self,
        sb: &Sandbox,
        spec: &InstanceSpec,
        image: &ImageRoot,
        extra: &[(String, String)],
    ) -> Result<(), String> {
        let mut env: BTreeMap<String, String> = spec.env.clone();
        env.extend(extra.iter().cloned());
        env.insert(
            "secret_mount_path".into(),
            virga_types::SECRETS_MOUNT.into(),
        );
        let watchdog = match image.lambda {
            true => {
                // Reached from the host at its end of the veth pair, as every watchdog.
                env.insert("port".into(), image.port.to_string());
                env.insert("bind_address".into(), "0.0.0.0".into());
                Some(self.watchdog_view()?)
            }
            false => None,
        };
        let overlay = sb.bundle.join("overlay");
        let (upper, work) = (overlay.join("upper"), overlay.join("work"));
        let rootfs = sb.bundle.join(ROOTFS);
        for d in [&upper, &work, &rootfs] {
            private_dir(d).map_err(io("create image root"))?;
        }
        // overlayfs shows the upper's mode for `/`: every user must be able to enter it.
        fs::set_permissions(&upper, fs::Permissions::from_mode(0o755))
            .map_err(io("chmod image root"))?;
        mounts::mount_image_root(&image.layers, &upper, &work, &rootfs)?;
        let secrets = sb.bundle.join(VIEWS[1]);
        mounts::make_view(&spec.secrets_dir, &secrets)?;
        let layout = ImageLayout {
            rootfs: &rootfs,
            secrets: &secrets,
            netns: &sb.net.netns,
            cgroups_path: &format!("/virga-{}/{}", self.key, sb.id),
            image,
            watchdog,
        };
        write_spec(sb, &oci::build_image(&env, &layout, spec.limits)?)
    }

    /// The read-only view of the watchdog tree, made the first time it is asked for.
    fn watchdog_view(&self) -> Result<&Path, String> {
        self.watchdog_view
            .get_or_init(|| {
                let (files, view) = &self.watchdog_tree;
                watchdog_files::gather(&self.watchdog, files).map_err(|e| e.to_string())?;
                // A view (see `mounts`): the sandbox's mountinfo names no host path.
                mounts::make_view(files, view)?;
                Ok(view.clone())
            })
            .as_deref()
            .map_err(Clone::clone)
    }

    /// Unmount and remove the watchdog tree (at start, what a previous run left; at
    /// shutdown, after the instances that mounted it).
    pub(super) fn remove_watchdog_tree(&self) {
        let (files, view) = &self.watchdog_tree;
        mounts::release_slot(view);
        let _ = fs::remove_dir_all(files);
    }
}
