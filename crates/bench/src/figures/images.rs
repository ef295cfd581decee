//! Images: pulling and unpacking a multi-layer image from a local registry next to skopeo
//! copying the same image, the bytes a one-line code change moves (re-push and re-pull)
//! next to the image's size, and an image function's start from zero next to a bare
//! `runc run` on the same root filesystem.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use virga_oci::{Images, Options};

use super::Ctx;
use crate::platform::Platform;
use crate::report::{Figure, Section, Target, Unit};
use crate::runner::{free_port, Proc, Stats};

/// Name for `--only`.
pub const NAME: &str = "images";

/// Section heading.
pub const TITLE: &str = "OCI images: pull vs skopeo, bytes moved by a code change";

/// What the figures mean.
pub const ABOUT: &str = "\
A local registry (Debian's `docker-registry` on loopback) holds a multi-layer image made of \
this machine's `/usr/lib/python3.11`, `/usr/share/perl`, `/usr/lib/x86_64-linux-gnu/perl` \
and `/usr/share/zoneinfo` (one layer each, about 40 MB compressed, 100 MB unpacked). \
Pull: a fresh virga-oci store pulls it (manifest, digests verified while streaming, every \
layer unpacked into its overlayfs lower directory) vs Debian's `skopeo copy docker://… \
oci:DIR` of the same image into a fresh directory (download and verify only); medians of \
the rounds. Target ≤ 1.0×. \
Code change: `virga push` of a bash function built on that image, then one line of its \
handler changed and pushed again; the bytes the registry's storage grew by on the second \
push, and the bytes a store holding the first version fetched to pull the second, vs the \
image's size (its layers and config). Target ≤ 1 %. \
Scale from zero: `virga up --isolation runc`, a bash template function built with \
`virga push` on a busybox-only base (three layers, cached after the deploy), deployed with \
`envProcess: cat` like the sandbox figures' `cat`, is scaled to zero and called once, as in the sandbox figures (same 0.5 s idle pause before each start); \
baseline: a bare `runc run` of busybox `true` on the same layers merged into one read-only \
root. Target ≤ bare runc + 10 ms.";

/// Host directories the test image is made of, one layer each.
const LAYERS: [&str; 4] = [
    "/usr/lib/python3.11",
    "/usr/share/perl",
    "/usr/lib/x86_64-linux-gnu/perl",
    "/usr/share/zoneinfo",
];

/// Measures the image figures and fills the section.
pub fn run(ctx: &Ctx, s: &mut Section) -> Result<()> {
    let work = ctx.dir(NAME)?;
    let registry = Registry::start(&work)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let big = format!("{}/bench/big:1", registry.host);
    let image_bytes = rt.block_on(make_image(&work.join("maker"), &big))?;
    let rounds = if ctx.settings.iterations < 1000 { 2 } else { 3 };
    let (ours, skopeo) = pull_series(&rt, &work, &big, rounds)?;
    let ours = s.measured(format!("virga-oci pull + unpack, {rounds} rounds"), ours);
    let skopeo = s.measured(format!("skopeo copy to oci:, {rounds} rounds"), skopeo);
    s.figure(Figure {
        name: format!(
            "pull + unpack of a {} MB {}-layer image, median",
            image_bytes >> 20,
            LAYERS.len()
        ),
        value_label: "virga-oci".into(),
        value: ours.p50_us / 1000.0,
        baseline_label: "skopeo copy".into(),
        baseline: skopeo.p50_us / 1000.0,
        unit: Unit::Millis,
        target: Target::RatioAtMost(1.0),
    });
    code_change(ctx, &rt, s, &registry, &big, &work)?;
    from_zero(ctx, &rt, s, &registry, &work, rounds * 4)
}

/// An image function's start from zero (layers cached) vs bare runc on its merged layers.
fn from_zero(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    s: &mut Section,
    registry: &Registry,
    work: &Path,
    rounds: usize,
) -> Result<()> {
    let base = format!("{}/bench/busybox:1", registry.host);
    rt.block_on(busybox_image(&work.join("busybox"), &base))?;
    let fn_ref = format!("{}/bench/zero:latest", registry.host);
    push_function(ctx, work, "zero", &fn_ref, &base)?;
    let mut platform = Platform::start(&ctx.bins, &ctx.dir("images-platform")?, "runc")?;
    platform.deploy_json(&json!({
        "service": "img-zero", "image": fn_ref, "envProcess": "cat",
        "labels": {"com.openfaas.scale.min": "0"}
    }))?;
    let http = reqwest::blocking::Client::new();
    let ours = super::sandbox::cold_starts(&http, &platform, "img-zero", rounds, false)?;
    drop(platform);

    let store = Images::open(&work.join("merge"), Options::default())?;
    let image = rt.block_on(store.pull(&fn_ref, None, None))?;
    let merged = work.join("merged");
    std::fs::create_dir_all(&merged)?;
    for layer in &image.layers {
        let status = Command::new("cp")
            .arg("-a")
            .arg(layer.join("."))
            .arg(&merged)
            .status()?;
        if !status.success() {
            bail!("cp -a {} failed", layer.display());
        }
    }
    let bare = super::sandbox::runc_run(work, &merged, "/bin/true", false, rounds)?;
    let ours = s.measured(format!("image function from zero, {rounds} starts"), ours);
    let bare = s.measured(format!("bare runc true on its root, {rounds} runs"), bare);
    s.figure(Figure {
        name: "image function start from zero (layers cached), p50".into(),
        value_label: "virga".into(),
        value: ours.p50_us,
        baseline_label: "bare runc".into(),
        baseline: bare.p50_us,
        unit: Unit::Micros,
        target: Target::AddedAtMost(10_000.0),
    });
    Ok(())
}

/// A one-layer image of Debian's static busybox and all its applets, pushed as `reference`.
async fn busybox_image(dir: &Path, reference: &str) -> Result<()> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("bin"))?;
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .context("copy /bin/busybox (scripts/setup --bench installs busybox-static)")?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", tree.join("bin").join(applet))?;
        }
    }
    let store = Images::open(&dir.join("store"), Options::default())?;
    let layer = store.build_layer(&tree, "")?;
    let spec = virga_oci::ImageSpec {
        layers: vec![layer],
        config: virga_oci::RunConfig {
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        },
        reference: Some(reference.to_string()),
        ..Default::default()
    };
    let digest = store.build_image(&spec)?;
    store.push(&digest, reference, None, None).await?;
    Ok(())
}

/// `virga new NAME --lang bash` in `work/NAME` (once) with `image:` and its base set, then
/// `virga push`; the source directory.
fn push_function(ctx: &Ctx, work: &Path, name: &str, image: &str, base: &str) -> Result<PathBuf> {
    let src = work.join(name);
    let virga = |args: &[&str]| -> Result<()> {
        let out = Command::new(&ctx.bins.virga)
            .args(args)
            .current_dir(&src)
            .env("VIRGA_IMAGE_CACHE", work.join("cli-images"))
            .env("HOME", work)
            .output()
            .with_context(|| format!("run virga {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "virga {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    };
    if !src.exists() {
        std::fs::create_dir_all(&src)?;
        virga(&["new", name, "--lang", "bash"])?;
        let stack = src.join("stack.yaml");
        let text = std::fs::read_to_string(&stack)?.replace(
            &format!("image: {name}:latest"),
            &format!("image: {image}\n    build_args:\n      BASE_IMAGE: {base}"),
        );
        std::fs::write(&stack, text)?;
    }
    virga(&["push"])?;
    Ok(src)
}

/// Build the test image from host directories and push it to `reference`; its size.
async fn make_image(dir: &Path, reference: &str) -> Result<u64> {
    let store = Images::open(dir, Options::default())?;
    let mut layers = Vec::new();
    for d in LAYERS {
        layers.push(store.build_layer(Path::new(d), d.trim_start_matches('/'))?);
    }
    let size = layers.iter().map(|l| l.size).sum();
    let spec = virga_oci::ImageSpec {
        layers,
        reference: Some(reference.to_string()),
        ..Default::default()
    };
    let digest = store.build_image(&spec)?;
    store.push(&digest, reference, None, None).await?;
    Ok(size)
}

/// Write back what earlier steps left dirty, then pause, so neither side of a comparison
/// pays for the other's writes. (Stores are not deleted between rounds either: ext4 is slow
/// to allocate thousands of inodes right after as many were freed.)
fn settle() -> Result<()> {
    Command::new("sync").status().context("run sync")?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(())
}

/// Timed pulls into fresh stores, and skopeo copies into fresh directories, alternating.
fn pull_series(
    rt: &tokio::runtime::Runtime,
    work: &Path,
    reference: &str,
    rounds: usize,
) -> Result<(Stats, Stats)> {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let dir = work.join(format!("pull-{i}"));
        let store = Images::open(&dir, Options::default())?;
        settle()?;
        let t = Instant::now();
        rt.block_on(store.pull(reference, None, None))?;
        ours.push(t.elapsed().as_secs_f64() * 1e6);

        let dir = work.join(format!("skopeo-{i}"));
        settle()?;
        let t = Instant::now();
        let out = Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:x", dir.display()))
            .output()
            .context("run skopeo (scripts/setup --bench installs it)")?;
        if !out.status.success() {
            bail!("skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
        }
        theirs.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let stats = |v: &mut Vec<f64>| Stats::from_samples(v).context("no pull measured");
    Ok((stats(&mut ours)?, stats(&mut theirs)?))
}

/// `virga push` of a bash function on `base`, a one-line change pushed again: bytes up (the
/// registry's growth) and down (what a store holding the first version fetches).
fn code_change(
    ctx: &Ctx,
    rt: &tokio::runtime::Runtime,
    s: &mut Section,
    registry: &Registry,
    base: &str,
    work: &Path,
) -> Result<()> {
    let fn_ref = format!("{}/bench/echo:latest", registry.host);
    let src = push_function(ctx, work, "echo", &fn_ref, base)?;
    let puller = Images::open(&work.join("repull"), Options::default())?;
    let first = rt.block_on(puller.pull(&fn_ref, None, None))?;
    let image_bytes = image_size(&puller, &first.manifest)?;

    let handler = src.join("echo/handler.sh");
    let mut code = std::fs::read_to_string(&handler)?;
    code.push_str("# one more line\n");
    std::fs::write(&handler, code)?;
    let before = dir_bytes(&registry.storage)?;
    push_function(ctx, work, "echo", &fn_ref, base)?;
    let pushed = dir_bytes(&registry.storage)? - before;
    let blobs = work.join("repull");
    let before = dir_bytes(&blobs)?;
    rt.block_on(puller.pull(&fn_ref, None, None))?;
    let pulled = dir_bytes(&blobs)?.saturating_sub(before);
    for (what, moved) in [("re-push", pushed), ("re-pull", pulled)] {
        s.figure(Figure {
            name: format!("{what} after a one-line code change, bytes moved"),
            value_label: what.into(),
            value: moved as f64,
            baseline_label: "image size".into(),
            baseline: image_bytes as f64,
            unit: Unit::Bytes,
            target: Target::RatioAtMost(0.01),
        });
    }
    Ok(())
}

/// The size of a stored image: its layers' blobs and its config.
fn image_size(store: &Images, manifest: &virga_oci::Digest) -> Result<u64> {
    let listed = store.list()?;
    let image = listed
        .iter()
        .find(|i| &i.manifest == manifest)
        .context("the pulled image is not listed")?;
    Ok(image.size)
}

/// Bytes of the regular files under `dir` (the blobs a store or registry keeps, not the
/// unpacked layers, which a pull writes besides).
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() && entry.file_name() != "layers" {
                stack.push(entry.path());
            } else if ft.is_file() {
                total += entry.metadata()?.len();
            }
        }
    }
    Ok(total)
}

/// A docker-registry on a free loopback port, stopped with the benchmark.
struct Registry {
    host: String,
    storage: PathBuf,
    _proc: Proc,
}

impl Registry {
    fn start(work: &Path) -> Result<Registry> {
        let port = free_port()?;
        let storage = work.join("registry");
        std::fs::create_dir_all(&storage)?;
        let config = work.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                storage.display()
            ),
        )?;
        let mut cmd = Command::new("/usr/bin/docker-registry");
        cmd.arg("serve").arg(&config);
        let proc = Proc::spawn("docker-registry", cmd, &work.join("registry.log"))?;
        crate::runner::wait_listening(port, "docker-registry")?;
        Ok(Registry {
            host: format!("127.0.0.1:{port}"),
            storage,
            _proc: proc,
        })
    }
}
