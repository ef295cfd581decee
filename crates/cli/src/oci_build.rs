//! OCI images of stack functions (`virga build --oci`, `virga push`, and `virga deploy` when
//! a function's `image:` names a registry host): the function's staged build becomes three
//! kinds of layer, so that a code change moves only the last one:
//! - the base image (`build_args.BASE_IMAGE` in stack.yml, else the template's
//!   `base_image`), pulled like any image;
//! - the runtime layer: the template's runtime files under `/home/app` and the watchdog with
//!   the shared libraries it needs under `/virga` (started through its own dynamic loader, so
//!   it runs on any base, musl or glibc); the same for every function of a template;
//! - the code layer: `function/` and the packages `virga build` installed (`python/`).
//!
//! The image starts the watchdog with the template's settings (`fprocess`, `mode`, ...) as
//! environment variables, listening on 8080 as OpenFaaS images do. Images are kept in a store
//! of the client's own (`$VIRGA_IMAGE_CACHE`, else `~/.cache/virga/images`).

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use virga_oci::{
    BuiltLayer, Credentials, Digest, ImageSpec, Images, InsecureRegistries, Options, Progress,
    RegistryConfig, RunConfig,
};

use virga_provider_local::watchdog_files;

use crate::stack::{Stack, StackFunction};

/// The function's home inside the image, as in OpenFaaS images.
const HOME: &str = "home/app";
/// The user functions run as (the sandbox's, also for bundles).
const USER: &str = "12000:12000";

/// Registry options shared by `build`, `push`, `deploy` and `registry login`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RegistryArgs {
    /// A registry spoken to over plain HTTP (repeatable; loopback ones always are).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// Docker-style credentials file [default: $DOCKER_CONFIG/config.json, else
    /// ~/.docker/config.json].
    #[arg(long, value_name = "PATH")]
    pub registry_config: Option<PathBuf>,
}

impl RegistryArgs {
    /// The credentials file in use.
    pub fn config_path(&self) -> Result<PathBuf> {
        if let Some(p) = &self.registry_config {
            return Ok(p.clone());
        }
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return Ok(PathBuf::from(dir).join("config.json"));
        }
        let home = std::env::var_os("HOME")
            .context("HOME is not set: pass --registry-config PATH for registry credentials")?;
        Ok(PathBuf::from(home).join(".docker/config.json"))
    }

    /// The credentials stored for `reference`'s registry, if any.
    pub fn credentials(&self, reference: &str) -> Result<Option<Credentials>> {
        let path = self.config_path()?;
        if !path.exists() {
            return Ok(None);
        }
        let registry = virga_oci::parse_reference(reference)?
            .registry()
            .to_string();
        Ok(RegistryConfig::load(&path)?.lookup(&registry)?)
    }

    /// The client's image store.
    pub fn store(&self) -> Result<Images> {
        let dir = match std::env::var_os("VIRGA_IMAGE_CACHE") {
            Some(d) => PathBuf::from(d),
            None => {
                let home = std::env::var_os("HOME")
                    .context("HOME is not set: set VIRGA_IMAGE_CACHE to a directory for images")?;
                PathBuf::from(home).join(".cache/virga/images")
            }
        };
        let opts = Options {
            insecure: InsecureRegistries::new(&self.insecure_registry),
            ..Options::default()
        };
        Images::open(&dir, opts).with_context(|| format!("opening image store {}", dir.display()))
    }
}

/// Whether `image` names a registry host (`host.domain/...`, `host:port/...`,
/// `localhost/...`), Docker's rule: such functions are built as OCI images.
pub fn names_registry(image: &str) -> bool {
    match image.split_once('/') {
        Some((first, _)) => first.contains('.') || first.contains(':') || first == "localhost",
        None => false,
    }
}

/// An image built for one function.
#[derive(Debug, Clone)]
pub struct OciBuilt {
    /// Function name.
    pub name: String,
    /// Where it is to be pushed (the stack's `image:`).
    pub reference: String,
    /// The image's manifest digest.
    pub digest: Digest,
    /// The runtime and code layers (bottom first), on top of the base's.
    pub layers: Vec<BuiltLayer>,
}

/// Build the OCI image of function `name`, whose build is staged at `stage` (see
/// `builder::build_function`); `env` is the watchdog environment of its template.
pub fn build(
    reg: &RegistryArgs,
    stack: &Stack,
    name: &str,
    f: &StackFunction,
    base: &str,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<OciBuilt> {
    if !names_registry(&f.image) {
        bail!(
            "functions.{name}.image is {:?}: an OCI build needs a registry host in it, e.g. \
             127.0.0.1:5000/{name}:latest",
            f.image
        );
    }
    let stage = stack.dir.join("build").join(name);
    let rt = runtime()?;
    let store = reg.store()?;
    println!("  base image {base}");
    let creds = reg.credentials(base)?;
    let base_image = rt
        .block_on(store.pull(base, creds.as_ref(), Some(progress_printer("pulling base"))))
        .with_context(|| format!("pulling base image {base}"))?;
    finish_progress();

    let work = stack.dir.join("build").join(format!(".oci-{name}"));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("cannot clear {}", work.display()))?;
    }
    let (runtime_dir, code_dir) = (work.join("runtime"), work.join("code"));
    split_stage(&stage, &runtime_dir.join(HOME), &code_dir)?;
    add_watchdog(&runtime_dir.join(watchdog_files::WATCHDOG_DIR.trim_start_matches('/')))?;
    let runtime = store.build_layer(&runtime_dir, "")?;
    let code = store.build_layer(&code_dir, HOME)?;
    let _ = fs::remove_dir_all(&work);

    let spec = ImageSpec {
        base: Some(base_image.digest),
        layers: vec![runtime.clone(), code.clone()],
        config: run_config(name, &f.lang, env, stage.join("python").is_dir()),
        reference: Some(f.image.clone()),
    };
    let digest = store.build_image(&spec)?;
    Ok(OciBuilt {
        name: name.to_string(),
        reference: f.image.clone(),
        digest,
        layers: vec![runtime, code],
    })
}

/// How the image starts: the watchdog with the template's settings, on 8080.
fn run_config(
    name: &str,
    lang: &str,
    env: &std::collections::BTreeMap<String, String>,
    python_deps: bool,
) -> RunConfig {
    let mut vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    vars.push("bind_address=0.0.0.0".into());
    vars.push("port=8080".into());
    if python_deps {
        vars.push(format!("PYTHONPATH=/{HOME}/python"));
    }
    RunConfig {
        entrypoint: Some(watchdog_files::command(watchdog_files::WATCHDOG_DIR)),
        cmd: None,
        env: vars,
        working_dir: Some(format!("/{HOME}")),
        user: Some(USER.into()),
        exposed_ports: vec!["8080/tcp".into()],
        labels: [
            ("com.openfaas.function".to_string(), name.to_string()),
            ("virga.template".to_string(), lang.to_string()),
        ]
        .into(),
    }
}

/// Copy the stage's runtime files (all but the code) to `runtime`, and `function/` and
/// `python/` to `code`.
fn split_stage(stage: &Path, runtime: &Path, code: &Path) -> Result<()> {
    fs::create_dir_all(runtime)?;
    fs::create_dir_all(code)?;
    for entry in fs::read_dir(stage).with_context(|| format!("cannot read {}", stage.display()))? {
        let entry = entry?;
        let file = entry.file_name();
        if file == virga_types::BUNDLE_MANIFEST {
            continue;
        }
        let to = if file == "function" || file == "python" {
            code.join(&file)
        } else {
            runtime.join(&file)
        };
        copy_all(&entry.path(), &to)?;
    }
    Ok(())
}

fn copy_all(from: &Path, to: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(from)?;
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else if meta.is_dir() {
        fs::create_dir_all(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_all(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else {
        fs::copy(from, to)
            .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// The watchdog and the libraries it links, with its loader, under `dir` (the runtime
/// layer's `/virga`).
fn add_watchdog(dir: &Path) -> Result<()> {
    let watchdog = crate::up::watchdog_path(None)?;
    watchdog_files::gather(&watchdog, dir)?;
    Ok(())
}

/// Push a function's image to its reference, printing progress.
pub fn push(reg: &RegistryArgs, built: &OciBuilt) -> Result<()> {
    let rt = runtime()?;
    let store = reg.store()?;
    let creds = reg.credentials(&built.reference)?;
    let pushed = rt
        .block_on(store.push(
            &built.digest,
            &built.reference,
            creds.as_ref(),
            Some(progress_printer(&format!("pushing {}", built.name))),
        ))
        .with_context(|| format!("pushing {}", built.reference))?;
    finish_progress();
    println!(
        "Pushed {} ({}): {} blob(s) uploaded, {} already there",
        pushed.reference, pushed.digest, pushed.uploaded, pushed.skipped
    );
    Ok(())
}

/// A progress callback printing `what: a/b layer(s), x / y` to stderr: rewritten in place
/// on a terminal, else a line per finished layer.
fn progress_printer(what: &str) -> virga_oci::ProgressFn {
    let what = what.to_string();
    let tty = std::io::stderr().is_terminal();
    let last = std::sync::atomic::AtomicUsize::new(usize::MAX);
    Arc::new(move |p: &Progress| {
        let line = format!(
            "  {what}: {}/{} layer(s), {} / {}",
            p.layers_done,
            p.layers_total,
            crate::pack::human_size(p.bytes_done),
            crate::pack::human_size(p.bytes_total)
        );
        if tty {
            eprint!("\r{line}   ");
        } else if last.swap(p.layers_done, std::sync::atomic::Ordering::Relaxed) != p.layers_done {
            eprintln!("{line}");
        }
    })
}

/// End the progress line on a terminal.
fn finish_progress() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

/// Options of `virga import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// A root filesystem as a tar archive, plain or gzip'd (e.g. `mmdebstrap`'s output).
    pub tarball: PathBuf,
    /// Where to push it, e.g. 127.0.0.1:5000/base/python3:bookworm.
    pub reference: String,
    /// An environment variable of the image (repeatable) [default: a standard PATH].
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Registry options.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Run `virga import`: push a root filesystem as a one-layer image, a base for OCI builds.
pub fn import(args: ImportArgs) -> Result<()> {
    let raw = fs::read(&args.tarball)
        .with_context(|| format!("cannot read {}", args.tarball.display()))?;
    let gzipped = if raw.starts_with(&[0x1f, 0x8b]) {
        raw
    } else {
        use std::io::Write;
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw)?;
        gz.finish()?
    };
    refuse_devices(&gzipped, &args.tarball)?;
    let store = args.registry.store()?;
    let layer = store.add_layer(&gzipped)?;
    let env = if args.env.is_empty() {
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()]
    } else {
        args.env.clone()
    };
    let spec = ImageSpec {
        base: None,
        layers: vec![layer],
        config: RunConfig {
            env,
            ..RunConfig::default()
        },
        reference: Some(args.reference.clone()),
    };
    let digest = store.build_image(&spec)?;
    push(
        &args.registry,
        &OciBuilt {
            name: args.tarball.display().to_string(),
            reference: args.reference,
            digest,
            layers: Vec::new(),
        },
    )
}

/// Refuse a root filesystem with device nodes (no image layer may hold one), saying how to
/// make one without.
fn refuse_devices(gzipped: &[u8], path: &Path) -> Result<()> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(gzipped));
    for entry in tar
        .entries()
        .with_context(|| format!("{} is not a tar archive", path.display()))?
    {
        let entry = entry.with_context(|| format!("reading {}", path.display()))?;
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() {
            bail!(
                "{} holds the device node {}: image layers may not hold devices (the sandbox \
                 provides /dev); leave them out, e.g. mmdebstrap --skip=output/dev",
                path.display(),
                entry.path()?.display()
            );
        }
    }
    Ok(())
}

/// A small runtime for the async image operations of one command.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start an async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts_are_told_apart() {
        assert!(names_registry("127.0.0.1:5000/echo:latest"));
        assert!(names_registry("ghcr.io/me/fn:1.2"));
        assert!(names_registry("localhost/fn"));
        assert!(!names_registry("echo:latest"));
        assert!(!names_registry("functions/echo:latest"));
    }
}
