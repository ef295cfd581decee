//! An image function's sandbox: its root is an overlay of the image's layers (read-only,
//! shared) over a writable upper directory of its own in the sandbox bundle (removed with
//! it), made read-only by runc when the function asks for `readOnlyRootFilesystem`. The
//! process is the image's, as its user; the protections are every sandbox's.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;

use super::oci::{self, ImageLayout};
use super::{io, mounts, private_dir, write_spec, Runc, Sandbox, ROOTFS, VIEWS};
use crate::image::ImageRoot;
use crate::spec::InstanceSpec;

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
        };
        write_spec(sb, &oci::build_image(&env, &layout, spec.limits)?)
    }
}
