//! `virga import`, `virga build --oci`, `virga push` and `virga deploy` round trip: a bash
//! template function built on a busybox-only base (imported from a root filesystem tarball
//! with the CLI), pushed to a real registry, deployed to a real `virga up` with runc, called;
//! then a one-line code change pushes and pulls only the code layer.

use std::path::Path;
use std::process::Command;

use reqwest::Method;
use serde_json::Value;
use virga_testkit::Platform;

use virga_testkit::registry::Registry;

/// Run the CLI in `dir` against `p` (if any), with its own image cache; stdout and stderr.
fn cli(dir: &Path, p: Option<&Platform>, args: &[&str]) -> String {
    let cache = dir.join("image-cache");
    let home = dir.to_str().unwrap();
    let mut env = vec![
        ("HOME", home),
        ("VIRGA_IMAGE_CACHE", cache.to_str().unwrap()),
    ];
    if let Some(p) = p {
        env.extend([
            ("VIRGA_URL", p.url.as_str()),
            ("VIRGA_PASSWORD", virga_testkit::PASSWORD),
        ]);
    }
    virga_testkit::cli(dir, &env, args)
}

/// `root` as the tar archive `tarball`, by Debian's tar.
fn tar_dir(root: &Path, tarball: &Path) {
    let status = Command::new("tar")
        .arg("-C")
        .arg(root)
        .arg("-cf")
        .arg(tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
}

/// A root filesystem with Debian's static busybox and every applet, as a tar archive.
fn busybox_rootfs(dir: &Path) -> std::path::PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    let tarball = dir.join("rootfs.tar");
    tar_dir(&root, &tarball);
    tarball
}

/// Entries of the platform's unpacked-layer store.
fn unpacked_layers(p: &Platform) -> usize {
    std::fs::read_dir(p.data_dir.join("images/layers"))
        .unwrap()
        .count()
}

fn call(p: &Platform, name: &str, body: &str) -> (u16, String) {
    let r = p
        .anon(Method::POST, &format!("/function/{name}"))
        .body(body.to_string())
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn a_template_function_builds_as_a_layered_image_and_a_code_change_moves_only_its_layer() {
    let reg = Registry::start(None);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let tarball = busybox_rootfs(w);
    let base = reg.image("base/busybox:1");
    let out = cli(w, None, &["import", tarball.to_str().unwrap(), &base]);
    assert!(out.contains(&format!("Pushed {base}")), "{out}");

    cli(w, None, &["new", "shout", "--lang", "bash"]);
    let stack = w.join("stack.yaml");
    let image = reg.image("shout:latest");
    let text = std::fs::read_to_string(&stack).unwrap().replace(
        "image: shout:latest",
        &format!("image: {image}\n    build_args:\n      BASE_IMAGE: {base}"),
    );
    std::fs::write(&stack, text).unwrap();

    let data = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(data.path(), &[]);
    let out = cli(w, Some(&p), &["deploy"]);
    assert!(
        out.contains("runtime layer") && out.contains("code layer"),
        "{out}"
    );
    assert!(out.contains("Deployed shout"), "{out}");
    assert_eq!(call(&p, "shout", "hello"), (200, "HELLO".into()));
    let r = p.sys(Method::GET, "/system/function/shout").send().unwrap();
    let status: Value = r.json().unwrap();
    let first = status["imageDigest"].as_str().unwrap().to_string();
    assert!(first.starts_with("sha256:"), "{status}");
    let layers = unpacked_layers(&p);
    assert_eq!(layers, 3, "base, runtime and code layers unpacked once");

    // One line of code changes: the code layer and the config are new; the base and the
    // runtime layer are neither uploaded nor pulled again.
    let handler = w.join("shout/handler.sh");
    let code = std::fs::read_to_string(&handler).unwrap();
    std::fs::write(&handler, format!("printf 'v2 '\n{code}")).unwrap();
    let out = cli(w, Some(&p), &["deploy"]);
    assert!(
        out.contains("2 blob(s) uploaded, 2 already there"),
        "only the code layer and the config go up: {out}"
    );
    assert_eq!(call(&p, "shout", "hello"), (200, "v2 HELLO".into()));
    assert_eq!(
        unpacked_layers(&p),
        layers + 1,
        "only the code layer came down"
    );
    let r = p.sys(Method::GET, "/system/function/shout").send().unwrap();
    let status: Value = r.json().unwrap();
    assert_ne!(status["imageDigest"].as_str().unwrap(), first, "{status}");

    // The same inputs build the same image: nothing to upload.
    let out = cli(w, Some(&p), &["push"]);
    assert!(out.contains("0 blob(s) uploaded, 4 already there"), "{out}");
}

#[test]
fn an_oci_build_without_a_registry_host_or_a_base_says_what_to_set() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    cli(w, None, &["new", "plain", "--lang", "bash"]);
    let out = Command::new(virga_testkit::virga_bin())
        .args(["build", "--oci"])
        .current_dir(w)
        .env("HOME", w)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs a registry host"), "{err}");

    let tarball = w.join("bad.tar");
    let root = w.join("devroot");
    std::fs::create_dir_all(&root).unwrap();
    let status = Command::new("mknod")
        .arg(root.join("null"))
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(status.success());
    tar_dir(&root, &tarball);
    let out = Command::new(virga_testkit::virga_bin())
        .args(["import", tarball.to_str().unwrap(), "127.0.0.1:1/x:1"])
        .current_dir(w)
        .env("HOME", w)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("device node") && err.contains("--skip=output/dev"),
        "{err}"
    );
}

#[test]
fn registry_login_checks_and_stores_credentials_and_deploy_sends_them_when_asked() {
    let creds = virga_oci::Credentials {
        username: "ada".into(),
        password: "s3cret".into(),
    };
    let reg = Registry::start(Some(creds.clone()));
    virga_testkit::registry::push_httpd(&reg, "private/web:1", "private page\n", Some(&creds));
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let config = w.join("auth/config.json");
    let config_arg = config.to_str().unwrap();

    // A wrong password is refused by the registry and nothing is stored.
    let out = Command::new(virga_testkit::virga_bin())
        .args(["registry", "login", &reg.host, "-u", "ada", "-p", "wrong"])
        .args(["--registry-config", config_arg])
        .current_dir(w)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("refused user \"ada\""), "{err}");
    assert!(!config.exists());

    let out = cli(
        w,
        None,
        &[
            "registry",
            "login",
            &reg.host,
            "-u",
            "ada",
            "-p",
            "s3cret",
            "--registry-config",
            config_arg,
        ],
    );
    assert!(out.contains("Login succeeded"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!std::fs::read_to_string(&config).unwrap().contains("s3cret"));

    let image = reg.image("private/web:1");
    std::fs::write(
        w.join("stack.yaml"),
        format!(
            "version: 1.0\nprovider:\n  name: openfaas\nfunctions:\n  web:\n    image: {image}\n"
        ),
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(data.path(), &[]);
    // Without the flag the platform has no credentials: the registry's 401 comes back.
    let out = Command::new(virga_testkit::virga_bin())
        .args(["deploy", "--registry-config", config_arg])
        .current_dir(w)
        .env("HOME", w)
        .env("VIRGA_URL", &p.url)
        .env("VIRGA_PASSWORD", virga_testkit::PASSWORD)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("401"), "{err}");
    let out = cli(
        w,
        Some(&p),
        &[
            "deploy",
            "--send-registry-auth",
            "--registry-config",
            config_arg,
        ],
    );
    assert!(out.contains("Deployed web"), "{out}");
    let r = p.anon(Method::GET, "/function/web").send().unwrap();
    assert_eq!(r.text().unwrap(), "private page\n");
}
