//! OCI images for Virga: a registry client (on `oci-client`: token and basic auth, OCI and
//! Docker schema-2 manifests, indexes followed to this machine's platform), a
//! content-addressed store of blobs and unpacked layers shared by every image and function,
//! safe layer unpacking (in overlayfs's form for lower dirs), reproducible layers and images
//! built from directories, push, listing and garbage collection.
//!
//! One handle, [`Images`], does it all; the gateway resolves and pins references at deploy
//! time ([`Images::resolve`]), the provider pulls the pinned digest and gets the layer
//! directories and config ([`Images::pull`], [`Images::image`]), `virga images` lists and
//! prunes ([`Images::list`], [`Images::prune`]), and `virga build --oci` / `virga push` build
//! and push ([`Images::build_layer`], [`Images::build_image`], [`Images::push`]). Every
//! failure is an [`OciError`] variant that names the HTTP status it stands for.

mod auth;
mod build;
mod config;
mod digest;
mod error;
mod fsops;
mod images;
mod pull;
mod push;
mod registry;
mod store;
mod unpack;
mod user;

pub use auth::{Credentials, RegistryConfig};
pub use build::{BuiltLayer, ImageSpec};
pub use config::{ImageConfig, Platform, RunConfig};
pub use digest::Digest;
pub use error::{OciError, Result};
pub use images::{CachedImage, Image, Images, Options, Progress, ProgressFn, Pruned, Resolved};
pub use push::Pushed;
pub use registry::{parse_reference, InsecureRegistries};
