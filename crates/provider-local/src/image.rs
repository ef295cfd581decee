//! Registry images as a function's root filesystem: the deployment's `image` is pinned
//! (`repo@sha256:...`, the gateway pulled it before storing), its layers are unpacked in
//! the image store, and an instance runs the image's `Entrypoint` + `Cmd` as its `User` in
//! its `WorkingDir`, with the image's `Env` under the function's `envVars` (and `fprocess`
//! from `envProcess`, as OpenFaaS sets it for the image's watchdog).
//!
//! A Lambda image (its process is a Lambda runtime, not a server: see [`lambda_image`]) runs
//! under the platform's own watchdog instead, in `mode=lambda`, with the image's `Entrypoint`
//! + `Cmd` as `fprocess`: the runtime then gets `AWS_LAMBDA_RUNTIME_API`, as on Lambda.

use std::collections::BTreeMap;
use std::path::PathBuf;

use virga_oci::{Digest, Images};
use virga_types::{BundleRef, FunctionDeployment};

/// Annotation naming the port an image listens on (8080 when absent, as OpenFaaS expects).
pub const PORT_ANNOTATION: &str = "virga.port";
/// Annotation saying whether an image is a Lambda image (`"true"`, `"false"`).
pub const LAMBDA_ANNOTATION: &str = "virga.lambda";
/// The port of the OpenFaaS workload contract.
const DEFAULT_PORT: u16 = 8080;
/// PATH when the image sets none (Docker's default).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How an instance of an image function runs.
#[derive(Debug, Clone)]
pub(crate) struct ImageRoot {
    /// Unpacked layer directories, bottom first (read-only overlay lower dirs).
    pub(crate) layers: Vec<PathBuf>,
    /// The process: `Entrypoint` then `Cmd`.
    pub(crate) args: Vec<String>,
    /// `WorkingDir`, or `/`.
    pub(crate) cwd: String,
    /// `User` as numbers.
    pub(crate) uid: u32,
    /// Its group.
    pub(crate) gid: u32,
    /// `readOnlyRootFilesystem`.
    pub(crate) read_only: bool,
    /// Where the image listens.
    pub(crate) port: u16,
    /// A Lambda image: the platform's watchdog is the process (from `/virga`), `args` its
    /// runtime (`fprocess`).
    pub(crate) lambda: bool,
}

/// The image store digest a deployment's `image` is pinned to, if it is a registry image
/// (neither empty nor a bundle).
pub(crate) fn pinned_digest(image: &str) -> Option<Result<Digest, String>> {
    if image.is_empty() || BundleRef::parse(image).is_some() {
        return None;
    }
    Some(
        Digest::pinned_in(image)
            .ok_or_else(|| format!("image {image:?} is not pinned to a digest: deploy it again")),
    )
}

/// The root and the environment (image `Env`) of `d`'s image `digest`.
pub(crate) fn root_of(
    images: Option<&Images>,
    d: &FunctionDeployment,
    digest: &Digest,
) -> Result<(ImageRoot, BTreeMap<String, String>), String> {
    let images = images.ok_or("image functions need runc sandboxes and the image store")?;
    let image = images.image(digest).map_err(|e| e.to_string())?;
    let (uid, gid) = image.user_ids().map_err(|e| e.to_string())?;
    let c = &image.config;
    if image.layers.is_empty() {
        return Err(format!("image {} has no layers: nothing to run", d.image));
    }
    let args: Vec<String> = c.entrypoint.iter().chain(&c.cmd).cloned().collect();
    if args.is_empty() {
        return Err(format!(
            "image {} has neither Entrypoint nor Cmd: nothing to run",
            d.image
        ));
    }
    let port =
        match d.annotations.as_ref().and_then(|a| a.get(PORT_ANNOTATION)) {
            None => DEFAULT_PORT,
            Some(p) => p.parse().ok().filter(|&p| p > 0).ok_or_else(|| {
                format!("annotation {PORT_ANNOTATION} {p:?} is not a port (1-65535)")
            })?,
        };
    let mut env: BTreeMap<String, String> = c
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lambda = lambda_image(d, &env)?;
    if lambda {
        let fprocess = shlex::try_join(args.iter().map(String::as_str))
            .map_err(|e| format!("the image's Entrypoint and Cmd cannot be quoted: {e}"))?;
        env.insert("fprocess".into(), fprocess);
        env.insert("mode".into(), "lambda".into());
    }
    env.entry("PATH".into())
        .or_insert_with(|| DEFAULT_PATH.into());
    Ok((
        ImageRoot {
            layers: image.layers,
            args,
            cwd: c.working_dir.clone().unwrap_or_else(|| "/".into()),
            uid,
            gid,
            read_only: d.read_only_root_filesystem,
            port,
            lambda,
        },
        env,
    ))
}

/// Whether `d`'s image (whose `Env` is `env`) is a Lambda image: its `envVars` say
/// `mode: lambda` or its annotation [`LAMBDA_ANNOTATION`] says `"true"`, or, when neither says
/// otherwise, its `Env` is AWS's base images' (`LAMBDA_TASK_ROOT` and `LAMBDA_RUNTIME_DIR`).
/// Never an image with a watchdog of its own (its `Env` sets `fprocess` or `mode`, as
/// `virga build --oci`'s and OpenFaaS's do): `envVars` are that watchdog's.
fn lambda_image(d: &FunctionDeployment, env: &BTreeMap<String, String>) -> Result<bool, String> {
    let annotation = match d
        .annotations
        .as_ref()
        .and_then(|a| a.get(LAMBDA_ANNOTATION))
    {
        None => None,
        Some(v) if v == "true" => Some(true),
        Some(v) if v == "false" => Some(false),
        Some(v) => {
            return Err(format!(
                "annotation {LAMBDA_ANNOTATION} {v:?} must be \"true\" or \"false\""
            ))
        }
    };
    if env.contains_key("fprocess") || env.contains_key("mode") {
        if annotation == Some(true) {
            return Err(format!(
                "image {} runs a watchdog of its own (its Env sets fprocess or mode), not a \
                 Lambda runtime: deploy it without {LAMBDA_ANNOTATION}, and with envVars \
                 mode: lambda if its watchdog is to run a Lambda runtime",
                d.image
            ));
        }
        return Ok(false);
    }
    let mode = d
        .env_vars
        .get("mode")
        .map(|m| m.trim().eq_ignore_ascii_case("lambda"));
    match (mode, annotation) {
        (Some(m), Some(a)) if m != a => Err(format!(
            "envVars mode and annotation {LAMBDA_ANNOTATION} disagree: set mode: lambda for a \
             Lambda image, or remove one of them"
        )),
        (Some(lambda), _) | (None, Some(lambda)) => Ok(lambda),
        (None, None) => {
            Ok(env.contains_key("LAMBDA_TASK_ROOT") && env.contains_key("LAMBDA_RUNTIME_DIR"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(mode: Option<&str>, annotation: Option<&str>) -> FunctionDeployment {
        FunctionDeployment {
            image: "127.0.0.1:5000/fn@sha256:00".into(),
            env_vars: mode
                .map(|m| ("mode".into(), m.into()))
                .into_iter()
                .collect(),
            annotations: annotation.map(|a| [(LAMBDA_ANNOTATION.into(), a.into())].into()),
            ..FunctionDeployment::default()
        }
    }

    fn env(vars: &[&str]) -> BTreeMap<String, String> {
        vars.iter().map(|k| (k.to_string(), "x".into())).collect()
    }

    #[test]
    fn the_deployment_marks_a_lambda_image_and_aws_env_does_unless_told_otherwise() {
        let aws = env(&["LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR"]);
        let plain = env(&["LAMBDA_TASK_ROOT"]);
        assert_eq!(lambda_image(&deployment(None, None), &plain), Ok(false));
        assert_eq!(lambda_image(&deployment(None, None), &aws), Ok(true));
        assert_eq!(
            lambda_image(&deployment(Some("Lambda"), None), &plain),
            Ok(true)
        );
        assert_eq!(
            lambda_image(&deployment(None, Some("true")), &plain),
            Ok(true)
        );
        assert_eq!(
            lambda_image(&deployment(None, Some("false")), &aws),
            Ok(false)
        );
        assert_eq!(
            lambda_image(&deployment(Some("http"), None), &aws),
            Ok(false)
        );
        let bad = lambda_image(&deployment(None, Some("yes")), &plain).unwrap_err();
        assert!(bad.contains(LAMBDA_ANNOTATION), "{bad}");
        let disagree = lambda_image(&deployment(Some("http"), Some("true")), &plain);
        assert!(disagree.unwrap_err().contains("disagree"));
    }

    #[test]
    fn an_image_with_a_watchdog_of_its_own_is_never_a_lambda_image() {
        for own in ["fprocess", "mode"] {
            let e = env(&[own, "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR"]);
            assert_eq!(
                lambda_image(&deployment(Some("lambda"), None), &e),
                Ok(false)
            );
            let forced = lambda_image(&deployment(None, Some("true")), &e).unwrap_err();
            assert!(forced.contains("watchdog of its own"), "{forced}");
        }
    }
}
