//! `virga deploy`: build the stack's functions, upload bundles the gateway does not have
//! yet (`HEAD` then `PUT /system/virga/bundles/sha256:HEX`) or push OCI images to their
//! registry (only the layers it lacks, as `faas-cli up` does), then update each function
//! (`PUT /system/functions`) or create it when the gateway answers 404 (`POST`), as
//! faas-cli does.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode};
use virga_types::{BundleRef, BundleUploaded, FunctionDeployment};

use crate::builder::{self, BuildOptions, Built};
use crate::client::{ensure_success, status_text, Client};
use crate::config;
use crate::namespaces::{target, NamespaceArg};
use crate::oci_build::{self, RegistryArgs};
use crate::stack::Stack;

/// Options of `virga deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// Stack file [default: stack.yaml, else stack.yml].
    #[arg(short = 'f', long = "yaml")]
    pub file: Option<PathBuf>,
    /// Only functions whose name matches (`*` allowed).
    #[arg(long)]
    pub filter: Option<String>,
    /// Build and push OCI images instead of uploading bundles (always for functions whose
    /// `image:` names a registry host).
    #[arg(long)]
    pub oci: bool,
    /// Send the credentials stored for each image's registry (--registry-config) with the
    /// deployment, for the platform's pull, as faas-cli's flag of that name does.
    #[arg(long)]
    pub send_registry_auth: bool,
    /// Registry options for OCI images.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Deploy into this namespace, whatever the stack file's `namespace:` says.
    #[command(flatten)]
    pub ns: NamespaceArg,
}

/// Options of `virga push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// Stack file [default: stack.yaml, else stack.yml].
    #[arg(short = 'f', long = "yaml")]
    pub file: Option<PathBuf>,
    /// Only functions whose name matches (`*` allowed).
    #[arg(long)]
    pub filter: Option<String>,
    /// Registry options.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Run `virga push`: build each selected function's OCI image (reproducibly: unchanged
/// layers keep their digests) and push it to its `image:` reference.
pub fn push(args: PushArgs) -> Result<()> {
    let stack = Stack::load(&crate::stack::default_file(args.file))?;
    let opts = BuildOptions {
        oci: true,
        registry: &args.registry,
        send_registry_auth: false,
    };
    let built = builder::build_stack(&stack, args.filter.as_deref(), opts)?;
    if built.is_empty() {
        println!("Nothing to push: no selected function has a `lang`.");
    }
    for b in &built {
        if let Some(oci) = &b.oci {
            oci_build::push(&args.registry, oci)?;
        }
    }
    Ok(())
}

/// Run `virga deploy`.
pub fn run(args: DeployArgs, gateway: Option<&str>) -> Result<()> {
    let stack = Stack::load(&crate::stack::default_file(args.file))?;
    let gateway = config::resolve_gateway(gateway, Some(&stack.provider.gateway));
    let client = Client::connect(&gateway)?;
    let opts = BuildOptions {
        oci: args.oci,
        registry: &args.registry,
        send_registry_auth: args.send_registry_auth,
    };
    deploy_stack(&client, &stack, args.filter.as_deref(), &args.ns, opts)
}

/// Build, upload and deploy the functions of `stack` (those matching `filter`), each into
/// the namespace `ns` picks for it.
pub fn deploy_stack(
    client: &Client,
    stack: &Stack,
    filter: Option<&str>,
    ns: &NamespaceArg,
    opts: BuildOptions,
) -> Result<()> {
    let selected = stack.select(filter)?;
    // A bad namespace fails the deploy before anything is built.
    let namespaces = selected
        .iter()
        .map(|(name, f)| {
            ns.pick(&f.namespace)
                .with_context(|| format!("the namespace of {name}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let built = builder::build_stack(stack, filter, opts)?;
    if !built.is_empty() {
        builder::print_table(&built);
        println!();
    }

    let mut failed = Vec::new();
    for ((name, f), ns) in selected.into_iter().zip(namespaces) {
        let key = target(name, &ns);
        let result = (|| -> Result<String> {
            let image = match built.iter().find(|b| b.name == name) {
                Some(Built { oci: Some(oci), .. }) => {
                    oci_build::push(opts.registry, oci)?;
                    oci.reference.clone()
                }
                Some(b) => {
                    upload(client, b)?;
                    b.image.clone()
                }
                None if !f.image.is_empty() || !f.fprocess.is_empty() => f.image.clone(),
                None => bail!(
                    "{name} has no `lang` (to build), `image` or `fprocess` in {}",
                    stack.path.display()
                ),
            };
            let mut deployment = stack.deployment(name, f, &image)?;
            deployment.namespace = ns.clone();
            let registry_image = !image.is_empty() && BundleRef::parse(&image).is_none();
            if opts.send_registry_auth && registry_image {
                if let Some(creds) = opts.registry.credentials(&image)? {
                    deployment.registry_auth = creds.to_base64();
                }
            }
            deploy_one(client, &deployment)
        })();
        match result {
            Ok(status) => println!("Deployed {key}: {} ({status})", client.function_url(&key)),
            Err(e) => {
                eprintln!("Deploying {key} failed: {e:#}");
                failed.push(key);
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} function(s) not deployed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Upload a bundle unless the gateway already has it.
pub fn upload(client: &Client, b: &Built) -> Result<()> {
    let path = format!("/system/virga/bundles/sha256:{}", b.digest);
    let resp = client.send(client.request(Method::HEAD, &path))?;
    match resp.status() {
        s if s.is_success() => {
            println!("Bundle of {} already on the gateway", b.name);
            return Ok(());
        }
        StatusCode::NOT_FOUND => {}
        s => bail!(
            "checking bundle of {}: gateway answered {} to HEAD {path}",
            b.name,
            status_text(s)
        ),
    }
    let bytes = std::fs::read(&b.archive)
        .with_context(|| format!("cannot read {}", b.archive.display()))?;
    println!(
        "Uploading bundle of {} ({})",
        b.name,
        crate::pack::human_size(b.size)
    );
    let rb = client
        .request(Method::PUT, &path)
        .timeout(std::time::Duration::from_secs(600))
        .header(reqwest::header::CONTENT_TYPE, "application/gzip")
        .body(bytes);
    let resp = client.send_ok(rb, &format!("uploading bundle of {}", b.name))?;
    // The answer names the stored bundle; older gateways may answer without a body.
    if let Ok(up) = resp.json::<BundleUploaded>() {
        if up.size != 0 && up.size != b.size {
            bail!(
                "gateway stored {} bytes of the bundle of {}, expected {}",
                up.size,
                b.name,
                b.size
            );
        }
    }
    Ok(())
}

/// Update the function, or create it when the gateway does not know it; returns the status.
pub fn deploy_one(client: &Client, d: &FunctionDeployment) -> Result<String> {
    let resp = client.send_json(Method::PUT, "/system/functions", d)?;
    let resp = if resp.status() == StatusCode::NOT_FOUND {
        client.send_json(Method::POST, "/system/functions", d)?
    } else {
        resp
    };
    let resp = ensure_success(resp, &format!("deploying {}", d.service))?;
    Ok(status_text(resp.status()))
}
