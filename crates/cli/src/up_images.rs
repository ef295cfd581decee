//! `virga up`'s image store: its flags (insecure registries, the registry credentials file,
//! the unpacked-size limit), opening it in the data directory, and at start re-pulling what a
//! stored function is pinned to but the store lacks (an interrupted pull, a lost layer).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use virga_gateway::Pulls;
use virga_oci::{Digest, Images, InsecureRegistries, Options, RegistryConfig};
use virga_store::Store;

/// Image options of `virga up`.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// A registry (HOST or HOST:PORT) spoken to over plain HTTP, as Docker's option of that
    /// name (repeatable; registries on loopback always may be).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Docker-style config.json with registry credentials (`auths`, as `docker login` and
    /// `faas-cli registry-login` write) [default: DATA_DIR/registry/config.json].
    #[arg(long, value_name = "PATH")]
    pub registry_config: Option<PathBuf>,
    /// Most bytes one image may unpack to (413 beyond).
    #[arg(long, default_value_t = 8 << 30)]
    pub max_image_bytes: u64,
}

impl ImageArgs {
    /// The credentials file in effect.
    pub fn registry_config(&self, data_dir: &Path) -> PathBuf {
        self.registry_config
            .clone()
            .unwrap_or_else(|| data_dir.join("registry/config.json"))
    }
}

/// The image store in `data_dir/images`.
pub fn open(args: &ImageArgs, data_dir: &Path) -> Result<Arc<Images>> {
    let opts = Options {
        insecure: InsecureRegistries::new(&args.insecure_registries),
        max_image_bytes: args.max_image_bytes,
        ..Options::default()
    };
    let images = Images::open(&data_dir.join("images"), opts).context("open the image store")?;
    Ok(Arc::new(images))
}

/// Pull every image a stored function is pinned to and the store does not hold whole (with
/// the credentials file's credentials); a failure is logged and that function's start fails.
pub async fn ensure(images: &Images, store: &Store, registry_config: &Path, pulls: &Arc<Pulls>) {
    let Ok(functions) = store.functions() else {
        return;
    };
    for f in functions {
        let image = &f.deployment.image;
        // Only registry images (bundles are pinned too, but not pulled).
        let Some(digest) = f.image_ref.as_ref().and(Digest::pinned_in(image)) else {
            continue;
        };
        if images.image(&digest).is_ok() {
            continue;
        }
        let key = f.key();
        tracing::info!(function = %key, image = %image, "pulling a missing image");
        let registry = virga_oci::parse_reference(image).map(|r| r.registry().to_string());
        let creds = registry.and_then(|host| RegistryConfig::load(registry_config)?.lookup(&host));
        let name = &key;
        let pulled = match creds {
            Ok(creds) => {
                let progress = pulls.start(name, image);
                images
                    .pull(image, creds.as_ref(), Some(progress))
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        };
        match pulled {
            Ok(()) => pulls.done(name, image),
            Err(e) => {
                tracing::error!(function = %name, "cannot pull {image}: {e}");
                pulls.failed(name, image, &e.to_string());
            }
        }
    }
}

/// Let `state`'s gateway deploy image functions from `images`, unless instances are not
/// runc sandboxes (`isolation`), in which case a deploy says why.
pub fn enable(
    state: &virga_gateway::AppState,
    images: Arc<Images>,
    registry_config: PathBuf,
    pulls: Arc<Pulls>,
    isolation: &str,
) {
    virga_gateway::enable_images(
        state,
        virga_gateway::ImagesConfig {
            images,
            registry_config,
            unavailable: (isolation != "runc")
                .then(|| format!("instances run as {isolation} instances")),
            pulls,
        },
    );
}
