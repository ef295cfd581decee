//! `virga build`: turn each stack function that has a `lang` into a bundle. A staging
//! directory `build/<name>/` gets the template's runtime files and the handler as
//! `function/`; dependencies are installed into it (pip into `python/`, byte-compiled; npm
//! into `function/node_modules`; pip's result is kept in `build/.deps/<name>/` and reused while the
//! requirements stay the same, as a Docker layer cache would); `virga-bundle.json` records the
//! watchdog environment; the
//! directory is packed deterministically into `build/<name>.tar.gz`, named by its SHA-256.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use virga_types::{BundleManifest, BundleRef, BUNDLE_MANIFEST};

use crate::oci_build::{self, OciBuilt, RegistryArgs};
use crate::pack;
use crate::stack::{Stack, StackFunction};
use crate::templates::{self, write_file, FUNCTION_DIR};

/// Options of `virga build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Stack file [default: stack.yaml, else stack.yml].
    #[arg(short = 'f', long = "yaml")]
    pub file: Option<PathBuf>,
    /// Only functions whose name matches (`*` allowed).
    #[arg(long)]
    pub filter: Option<String>,
    /// Build OCI images (base + runtime layer + code layer) instead of bundles; functions
    /// whose `image:` names a registry host always are.
    #[arg(long)]
    pub oci: bool,
    /// Registry options for OCI builds.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// How to build: bundles, or OCI images where asked for.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions<'a> {
    /// OCI images for every function, not only those whose `image:` names a registry.
    pub oci: bool,
    /// Registries and credentials for OCI builds.
    pub registry: &'a RegistryArgs,
    /// Deployments carry the credentials of their image's registry (`virga deploy`).
    pub send_registry_auth: bool,
}

/// A bundle built for one function.
#[derive(Debug, Clone)]
pub struct Built {
    /// Function name.
    pub name: String,
    /// The archive on disk.
    pub archive: PathBuf,
    /// Hex SHA-256 of the archive.
    pub digest: String,
    /// Archive size in bytes.
    pub size: u64,
    /// `virga.local/NAME@sha256:HEX`, or the registry reference of an OCI image.
    pub image: String,
    /// The OCI image, when one was built.
    pub oci: Option<OciBuilt>,
}

/// Run `virga build`.
pub fn run(args: BuildArgs) -> Result<()> {
    let stack = Stack::load(&crate::stack::default_file(args.file))?;
    let opts = BuildOptions {
        oci: args.oci,
        registry: &args.registry,
        send_registry_auth: false,
    };
    let built = build_stack(&stack, args.filter.as_deref(), opts)?;
    if built.is_empty() {
        println!("Nothing to build: no selected function has a `lang`.");
        return Ok(());
    }
    print_table(&built);
    Ok(())
}

/// Build every selected function that has a `lang`, in name order.
pub fn build_stack(stack: &Stack, filter: Option<&str>, opts: BuildOptions) -> Result<Vec<Built>> {
    let mut built = Vec::new();
    for (name, f) in stack.select(filter)? {
        if f.lang.is_empty() {
            if f.image.is_empty() {
                println!("Skipping {name}: no `lang`, it runs `{}` as is", f.fprocess);
            } else {
                println!(
                    "Skipping {name}: no `lang`, it deploys image {} as is",
                    f.image
                );
            }
            continue;
        }
        built.push(
            build_function(stack, name, f, opts).with_context(|| format!("building {name}"))?,
        );
    }
    Ok(built)
}

/// Build one function's bundle.
pub fn build_function(
    stack: &Stack,
    name: &str,
    f: &StackFunction,
    opts: BuildOptions,
) -> Result<Built> {
    let dirs = templates::search_dirs(&[&stack.dir]);
    let template = templates::find(&f.lang, &dirs)?;
    if f.handler.is_empty() {
        bail!(
            "{}: functions.{name}.handler is missing: set it to the function's folder, e.g. ./{name}",
            stack.path.display()
        );
    }
    let handler = stack.resolve(&f.handler);
    if !handler.is_dir() {
        bail!(
            "handler folder {} of {name} does not exist (functions.{name}.handler in {})",
            handler.display(),
            stack.path.display()
        );
    }
    let build_dir = stack.dir.join("build");
    let stage = build_dir.join(name);
    println!(
        "Building {name} ({} template, {}) from {}",
        f.lang,
        template.origin(),
        handler.display()
    );
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("cannot clear {}", stage.display()))?;
    }
    fs::create_dir_all(&stage).with_context(|| format!("cannot create {}", stage.display()))?;
    template.write_runtime(&stage)?;
    copy_tree(&handler, &stage.join(FUNCTION_DIR), Some(&build_dir))?;

    install_dependencies(&stage, &build_dir.join(DEPS_CACHE).join(name))?;

    let manifest = BundleManifest {
        lang: template.lang.clone(),
        env: template.watchdog_env()?,
    };
    write_file(
        &stage.join(BUNDLE_MANIFEST),
        &serde_json::to_vec_pretty(&manifest)?,
        0o644,
    )?;

    let bytes = pack::pack_dir(&stage)?;
    let digest = pack::sha256_hex(&bytes);
    let archive = build_dir.join(format!("{name}.tar.gz"));
    fs::write(&archive, &bytes).with_context(|| format!("cannot write {}", archive.display()))?;
    let mut image = BundleRef {
        name: name.to_string(),
        digest: digest.clone(),
    }
    .to_string();
    let oci = if opts.oci || oci_build::names_registry(&f.image) {
        let built = oci_image(stack, name, f, &template, &manifest.env, opts)?;
        image = format!("{}@{}", built.reference, built.digest);
        Some(built)
    } else {
        None
    };
    Ok(Built {
        name: name.to_string(),
        archive,
        digest,
        size: bytes.len() as u64,
        image,
        oci,
    })
}

/// The OCI image of a staged function, on its base: stack.yml's `build_args.BASE_IMAGE`,
/// else the template's `base_image`.
fn oci_image(
    stack: &Stack,
    name: &str,
    f: &StackFunction,
    template: &templates::Template,
    env: &std::collections::BTreeMap<String, String>,
    opts: BuildOptions,
) -> Result<OciBuilt> {
    let base = match f.build_args.get("BASE_IMAGE") {
        Some(b) => b.clone(),
        None => template.spec()?.base_image,
    };
    if base.is_empty() {
        bail!(
            "an OCI build of {name} needs a base image: set functions.{name}.build_args.BASE_IMAGE \
             in {} or base_image in the {} template (docs/images.md shows how to make one)",
            stack.path.display(),
            f.lang
        );
    }
    oci_build::build(opts.registry, stack, name, f, &base, env)
}

/// Print one line per bundle: name, size, image reference.
pub fn print_table(built: &[Built]) {
    let width = built.iter().map(|b| b.name.len()).max().unwrap_or(0).max(8);
    println!("\n{:<width$}  {:>10}  IMAGE", "FUNCTION", "SIZE");
    for b in built {
        println!(
            "{:<width$}  {:>10}  {}",
            b.name,
            pack::human_size(b.size),
            b.image
        );
        if let Some(oci) = &b.oci {
            for (what, l) in ["runtime", "code"].iter().zip(&oci.layers) {
                println!(
                    "{:<width$}  {:>10}  {what} layer {}",
                    "",
                    pack::human_size(l.size),
                    l.digest
                );
            }
        }
    }
}

/// Copy `src` into `dest`. With `skip` (a handler's folder, skipping the build dir in it),
/// VCS folders, byte-code caches and editor droppings are left out; without, it is exact
/// (the pip cache keeps its byte-code).
fn copy_tree(src: &Path, dest: &Path, skip: Option<&Path>) -> Result<()> {
    let exact = skip.is_none();
    let skip = skip.and_then(|s| s.canonicalize().ok());
    fn walk(src: &Path, dest: &Path, skip: &Option<PathBuf>, exact: bool) -> Result<()> {
        fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
        let mut entries: Vec<_> = fs::read_dir(src)
            .with_context(|| format!("cannot read {}", src.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name();
            if !exact && (name == ".git" || name == "__pycache__" || name == ".DS_Store") {
                continue;
            }
            let from = entry.path();
            let to = dest.join(&name);
            let ft = entry.file_type()?;
            if ft.is_symlink() {
                let target = fs::read_link(&from)?;
                #[cfg(unix)]
                std::os::unix::fs::symlink(&target, &to)
                    .with_context(|| format!("cannot copy link {}", from.display()))?;
                #[cfg(not(unix))]
                let _ = target;
            } else if ft.is_dir() {
                if skip.is_some() && from.canonicalize().ok() == *skip {
                    continue;
                }
                walk(&from, &to, skip, exact)?;
            } else if ft.is_file() {
                fs::copy(&from, &to).with_context(|| {
                    format!("cannot copy {} to {}", from.display(), to.display())
                })?;
            }
        }
        Ok(())
    }
    walk(src, dest, &skip, exact)
}

/// Where `virga build` keeps each function's pip install between builds (under `build/`).
const DEPS_CACHE: &str = ".deps";

/// Install what the handler (or template) declares: pip requirements into `python/`,
/// npm dependencies into `function/node_modules` (the template's own into `node_modules`).
/// Output of the tools is streamed.
fn install_dependencies(stage: &Path, pip_cache: &Path) -> Result<()> {
    install_python(stage, pip_cache)?;
    // The handler's packages, and the template's own (an Express-based index.js, say).
    for dir in [stage.join(FUNCTION_DIR), stage.to_path_buf()] {
        let package = dir.join("package.json");
        if package.is_file() && has_npm_dependencies(&package)? {
            let mut cmd = Command::new("npm");
            cmd.args(["install", "--omit=dev", "--no-audit", "--no-fund"])
                .current_dir(&dir);
            run_tool(cmd, "npm (is Node.js installed?)")?;
        }
    }
    Ok(())
}

/// pip-install the handler's and the template's requirements into `python/`, or copy the
/// previous build's install from `cache` when the requirements and python3 are unchanged.
fn install_python(stage: &Path, cache: &Path) -> Result<()> {
    let mut reqs = Vec::new();
    for req in [
        stage.join(FUNCTION_DIR).join("requirements.txt"),
        stage.join("requirements.txt"),
    ] {
        if has_requirements(&req)? {
            reqs.push(req);
        }
    }
    if reqs.is_empty() {
        return Ok(());
    }
    // Absolute: pip runs from the requirements file's directory.
    let target = std::path::absolute(stage.join("python"))?;
    let key = pip_cache_key(stage, &reqs)?;
    let (cached_key, cached) = (cache.join("key"), cache.join("python"));
    if let Some(key) = &key {
        if fs::read_to_string(&cached_key).is_ok_and(|k| k == *key) && cached.is_dir() {
            println!(
                "  pip: requirements unchanged, reusing {} (delete it to reinstall)",
                cache.display()
            );
            return copy_tree(&cached, &target, None);
        }
    }
    for req in &reqs {
        let req = std::path::absolute(req)?;
        let mut cmd = Command::new("python3");
        cmd.args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-compile",
        ])
        .arg("--target")
        .arg(&target)
        .arg("-r")
        .arg(&req);
        // Relative paths in a requirements file are read from where it is, as a
        // template's Dockerfile runs pip from that directory.
        if let Some(dir) = req.parent() {
            cmd.current_dir(dir);
        }
        run_tool(cmd, "pip (is python3 with pip installed?)")?;
    }
    compile_python(&target)?;
    if cache.exists() {
        fs::remove_dir_all(cache).with_context(|| format!("cannot clear {}", cache.display()))?;
    }
    if let Some(key) = key {
        copy_tree(&target, &cached, None)?;
        // Written last: a cache without its key (an interrupted copy) is never used.
        write_file(&cached_key, key.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// Byte-compile the installed packages, so a runtime does not compile them at each cold
/// start (it cannot write the caches into a read-only bundle; awslambdaric and its
/// dependencies take about 13 ms to compile). Source-hash stamps and a fixed path prefix keep
/// the bundle reproducible; pip's own compile (`--no-compile`) would stamp file times.
fn compile_python(target: &Path) -> Result<()> {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "compileall",
        "-q",
        "--invalidation-mode",
        "checked-hash",
        "-d",
        "python",
    ])
    .arg(target);
    run_tool(cmd, "python3 -m compileall")
}

/// What a pip install depends on: python3's version and the requirements files, or `None`
/// when a requirement points at something else pip would read (a path, a URL, an option
/// such as `-r other.txt` or `-e .`), whose changes the files' text would not show.
fn pip_cache_key(stage: &Path, reqs: &[PathBuf]) -> Result<Option<String>> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for req in reqs {
        let text =
            fs::read_to_string(req).with_context(|| format!("cannot read {}", req.display()))?;
        let plain = text
            .lines()
            .map(|l| l.split(" #").next().unwrap_or("").trim())
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .all(|l| {
                l.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && !l.contains(['/', '\\'])
                    && ![".whl", ".tar.gz", ".zip"]
                        .iter()
                        .any(|ext| l.ends_with(ext))
            });
        if !plain {
            return Ok(None);
        }
        h.update(
            req.strip_prefix(stage)
                .unwrap_or(req)
                .as_os_str()
                .as_encoded_bytes(),
        );
        h.update([0]);
        h.update(text.as_bytes());
        h.update([0]);
    }
    // A new python3 needs its own wheels (cp311 vs cp312).
    let version = Command::new("python3")
        .arg("-VV")
        .output()
        .context("cannot run python3 (is python3 with pip installed?)")?;
    h.update(&version.stdout);
    Ok(Some(hex::encode(h.finalize())))
}

fn has_requirements(path: &Path) -> Result<bool> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .map(str::trim)
            .any(|l| !l.is_empty() && !l.starts_with('#'))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn has_npm_dependencies(path: &Path) -> Result<bool> {
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    let non_empty = |k: &str| {
        json.get(k)
            .and_then(|d| d.as_object())
            .is_some_and(|d| !d.is_empty())
    };
    Ok(non_empty("dependencies") || non_empty("optionalDependencies"))
}

fn run_tool(mut cmd: Command, what: &str) -> Result<()> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("  running: {shown}");
    let status = cmd.status().with_context(|| format!("cannot run {what}"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}); see its output above");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_reproducible_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        crate::new::create("echo", "bash", "", Path::new("stack.yml"), base, &[]).unwrap();
        let stack = Stack::load(&base.join("stack.yml")).unwrap();
        let registry = RegistryArgs::default();
        let opts = BuildOptions {
            oci: false,
            registry: &registry,
            send_registry_auth: false,
        };
        let first = build_stack(&stack, None, opts).unwrap();
        let second = build_stack(&stack, Some("echo"), opts).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].digest, second[0].digest);
        assert_eq!(
            first[0].image,
            format!("virga.local/echo@sha256:{}", first[0].digest)
        );
        let bytes = fs::read(&first[0].archive).unwrap();
        assert_eq!(pack::sha256_hex(&bytes), first[0].digest);
        let manifest: BundleManifest = serde_json::from_slice(
            &fs::read(base.join("build/echo").join(BUNDLE_MANIFEST)).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest.lang, "bash");
        assert_eq!(manifest.env["fprocess"], "sh function/handler.sh");
        assert_eq!(manifest.env["mode"], "serializing");
        assert!(base.join("build/echo/function/handler.sh").is_file());
        assert!(!base.join("build/echo/template.yml").exists());
    }

    #[test]
    fn pip_installs_are_reused_only_for_plain_requirements() {
        let dir = tempfile::tempdir().unwrap();
        let req = dir.path().join("requirements.txt");
        let key = |text: &str| {
            fs::write(&req, text).unwrap();
            pip_cache_key(dir.path(), std::slice::from_ref(&req)).unwrap()
        };
        let pinned = key("# runtime\nawslambdaric==4.2.2  # pinned\nsimplejson>=3\n").unwrap();
        assert_eq!(
            key("# runtime\nawslambdaric==4.2.2  # pinned\nsimplejson>=3\n"),
            Some(pinned.clone())
        );
        assert_ne!(key("awslambdaric==4.2.1\n"), Some(pinned));
        for text in [
            "-r other.txt\n",
            "-e .\n",
            "./lib\n",
            "pkg @ https://x/p.whl\n",
            "dist.tar.gz\n",
        ] {
            assert_eq!(key(text), None, "{text}");
        }
    }

    #[test]
    fn compiled_packages_are_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("python");
        write_file(
            &target.join("pkg/__init__.py"),
            b"def f():\n    return 1\n",
            0o644,
        )
        .unwrap();
        let compiled = || {
            compile_python(&target).unwrap();
            let pyc = fs::read_dir(target.join("pkg/__pycache__"))
                .unwrap()
                .map(|e| fs::read(e.unwrap().path()).unwrap())
                .collect::<Vec<_>>();
            fs::remove_dir_all(target.join("pkg/__pycache__")).unwrap();
            pyc
        };
        let first = compiled();
        assert_eq!(first.len(), 1);
        // Bytes 4..8 say source-hash stamped (not the file's time): another build writes
        // the same bytes.
        assert_eq!(first[0][4..8], [3, 0, 0, 0]);
        assert_eq!(compiled(), first);
    }
}
