//! Build, push and pull against a real registry (Debian's docker-registry), cross-checked with
//! skopeo: a busybox image with no Virga component, a multi-layer image with whiteouts and an
//! opaque directory (mounted with the real overlayfs), Docker schema-2 and OCI manifests,
//! indexes with several platforms, and listing and pruning the store.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{inspect, layer, raw_digest, skopeo, store, store_with, Entry, Registry};
use virga_oci::{Digest, ImageSpec, Images, OciError, Options, Platform, Progress, RunConfig};

/// A rootfs with the static busybox: `/bin/sh -> /bin/busybox` (absolute, as images have it).
fn busybox_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    std::fs::set_permissions(
        dir.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("/bin/busybox", dir.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("busybox", dir.join("bin/httpd")).unwrap();
    std::fs::write(dir.join("www/index.html"), "hello from busybox\n").unwrap();
}

fn httpd_config() -> RunConfig {
    RunConfig {
        entrypoint: Some(vec![
            "/bin/httpd".into(),
            "-f".into(),
            "-p".into(),
            "8080".into(),
            "-h".into(),
            "/www".into(),
        ]),
        env: vec!["PATH=/bin".into()],
        exposed_ports: vec!["8080/tcp".into()],
        labels: BTreeMap::from([("org.example.kind".to_string(), "busybox".to_string())]),
        ..RunConfig::default()
    }
}

/// Build the busybox image in `images` and return its digest.
fn build_busybox(images: &Images, src: &Path) -> Digest {
    let layer = images.build_layer(src, "").unwrap();
    images
        .build_image(&ImageSpec {
            layers: vec![layer],
            config: httpd_config(),
            ..ImageSpec::default()
        })
        .unwrap()
}

#[tokio::test]
async fn busybox_image_is_built_reproducibly_pushed_and_pulled_and_skopeo_agrees() {
    let reg = Registry::start();
    let src = tempfile::tempdir().unwrap();
    busybox_tree(src.path());
    let (_d1, builder) = store();
    let digest = build_busybox(&builder, src.path());
    // The same files build the same image in another store (and would on another machine).
    let (_d2, other) = store();
    assert_eq!(build_busybox(&other, src.path()), digest);

    let target = reg.image("busybox:1");
    let pushed = builder.push(&digest, &target, None, None).await.unwrap();
    assert_eq!(
        (pushed.digest.clone(), pushed.uploaded, pushed.skipped),
        (digest.clone(), 2, 0)
    );
    let again = builder.push(&digest, &target, None, None).await.unwrap();
    assert_eq!(
        (again.uploaded, again.skipped),
        (0, 2),
        "blobs the registry has are not sent again"
    );

    let info = inspect(&target, &[]);
    assert_eq!(info["Digest"], digest.as_str());
    assert_eq!(
        (info["Os"].as_str(), info["Architecture"].as_str()),
        (Some("linux"), Some("amd64"))
    );
    let config = inspect(&target, &["--config"]);
    assert_eq!(config["config"]["Entrypoint"][0], "/bin/httpd");
    assert_eq!(
        config["config"]["ExposedPorts"]["8080/tcp"],
        serde_json::json!({})
    );

    let (_d3, puller) = store();
    let resolved = puller.resolve(&target, None).await.unwrap();
    assert_eq!(resolved.digest, digest);
    assert_eq!(resolved.pinned, format!("{}/busybox@{digest}", reg.host));
    let seen: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let log = seen.clone();
    let report: virga_oci::ProgressFn =
        Arc::new(move |p: &Progress| log.lock().unwrap().push(p.clone()));
    let image = puller
        .pull(&resolved.pinned, None, Some(report))
        .await
        .unwrap();
    let last = seen.lock().unwrap().last().cloned().unwrap();
    assert_eq!((last.layers_done, last.layers_total), (1, 1));
    assert_eq!(last.bytes_done, last.bytes_total);
    assert!(last.bytes_total > 500_000, "{last:?}");

    assert_eq!(image.digest, digest);
    assert_eq!(image.config.entrypoint[0], "/bin/httpd");
    assert_eq!(image.config.exposed_ports, vec!["8080/tcp"]);
    assert_eq!(image.config.labels["org.example.kind"], "busybox");
    let root = &image.layers[0];
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        std::fs::metadata(root.join("bin/busybox")).unwrap().mode() & 0o7777,
        0o755
    );
    // The rootfs runs: its absolute /bin/sh link resolves inside it.
    let out = Command::new("chroot")
        .arg(root)
        .args(["/bin/sh", "-c", "echo hi from $0"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi from /bin/sh\n",
        "{out:?}"
    );

    // Pulled again by tag: nothing to download.
    let seen2: Arc<Mutex<Vec<Progress>>> = Arc::default();
    let log2 = seen2.clone();
    let report: virga_oci::ProgressFn =
        Arc::new(move |p: &Progress| log2.lock().unwrap().push(p.clone()));
    let again = puller.pull(&target, None, Some(report)).await.unwrap();
    assert_eq!(again, image);
    assert_eq!(seen2.lock().unwrap().last().unwrap().layers_total, 0);
}

#[tokio::test]
async fn whiteouts_and_opaque_dirs_become_overlayfs_lower_layers() {
    let reg = Registry::start();
    let (_d, builder) = store();
    let src = tempfile::tempdir().unwrap();
    for (p, data) in [
        ("etc/a", "a"),
        ("etc/b", "b"),
        ("d/x", "x"),
        ("d/y", "y"),
        ("keep/k", "k"),
    ] {
        std::fs::create_dir_all(src.path().join(p).parent().unwrap()).unwrap();
        std::fs::write(src.path().join(p), data).unwrap();
    }
    let base = builder.build_layer(src.path(), "").unwrap();
    let top = builder
        .add_layer(&layer(&[
            Entry::File("etc/.wh.a", 0o644, b""),
            Entry::Dir("d/", 0o755),
            Entry::File("d/.wh..wh..opq", 0o644, b""),
            Entry::File("d/z", 0o644, b"z"),
        ]))
        .unwrap();
    let digest = builder
        .build_image(&ImageSpec {
            layers: vec![base.clone(), top.clone()],
            ..ImageSpec::default()
        })
        .unwrap();
    let target = reg.image("layered:1");
    builder.push(&digest, &target, None, None).await.unwrap();
    let info = inspect(&target, &[]);
    assert_eq!(
        info["Layers"],
        serde_json::json!([base.digest.as_str(), top.digest.as_str()])
    );
    let oci_dir = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{target}"),
        &format!("oci:{}:x", oci_dir.path().display()),
    ]);
    assert!(oci_dir
        .path()
        .join("blobs/sha256")
        .join(top.digest.hex())
        .is_file());

    let (_d2, puller) = store();
    let image = puller.pull(&target, None, None).await.unwrap();
    let upper = &image.layers[1];
    let wh = std::fs::symlink_metadata(upper.join("etc/a")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "{wh:?}");
    let mut opaque = [0u8; 8];
    let n = rustix::fs::getxattr(upper.join("d"), "trusted.overlay.opaque", &mut opaque).unwrap();
    assert_eq!(&opaque[..n], b"y");
    assert!(!upper.join("etc/.wh.a").exists() && !upper.join("d/.wh..wh..opq").exists());

    // The real overlayfs reads them as intended.
    let mnt = tempfile::tempdir().unwrap();
    let status = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("ro,lowerdir={}", image.overlay_lowerdir()))
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(status.success());
    let names = |p: &str| {
        let mut v: Vec<String> = std::fs::read_dir(mnt.path().join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let seen = (names("etc"), names("d"), names("keep"));
    Command::new("umount").arg(mnt.path()).status().unwrap();
    assert_eq!(
        seen,
        (
            vec!["b".to_string()],
            vec!["z".to_string()],
            vec!["k".to_string()]
        )
    );
}

#[tokio::test]
async fn docker_schema2_and_oci_manifests_both_pull() {
    let reg = Registry::start();
    let src = tempfile::tempdir().unwrap();
    busybox_tree(src.path());
    let (_d, builder) = store();
    let digest = build_busybox(&builder, src.path());
    let oci = reg.image("fmt:oci");
    builder.push(&digest, &oci, None, None).await.unwrap();
    for (format, tag) in [("v2s2", "fmt:v2s2"), ("oci", "fmt:oci2")] {
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            "--format",
            format,
            &format!("docker://{oci}"),
            &format!("docker://{}", reg.image(tag)),
        ]);
    }
    let v2s2 = reg.image("fmt:v2s2");
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{v2s2}"),
    ]);
    assert!(
        raw.contains("application/vnd.docker.distribution.manifest.v2+json"),
        "{raw}"
    );
    assert!(
        raw.contains("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        "{raw}"
    );

    for tag in ["fmt:v2s2", "fmt:oci2"] {
        let (_d, puller) = store();
        let image = puller.pull(&reg.image(tag), None, None).await.unwrap();
        assert_eq!(
            image.digest.as_str(),
            raw_digest(&reg.image(tag), &[]),
            "{tag}"
        );
        assert_eq!(image.config.entrypoint[0], "/bin/httpd", "{tag}");
        assert!(image.layers[0].join("bin/busybox").is_file(), "{tag}");
    }
}

#[tokio::test]
async fn indexes_are_followed_to_this_platform_and_other_platforms_are_named() {
    let reg = Registry::start();
    let src = tempfile::tempdir().unwrap();
    busybox_tree(src.path());
    let arm = Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
    };
    let mut entries = Vec::new();
    for (platform, tag) in [
        (Platform::host(), "multi:amd64"),
        (arm.clone(), "multi:arm64"),
    ] {
        let (_d, builder) = store_with(Options {
            platform: platform.clone(),
            ..Options::default()
        });
        let digest = build_busybox(&builder, src.path());
        builder
            .push(&digest, &reg.image(tag), None, None)
            .await
            .unwrap();
        let raw = skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{}", reg.image(tag)),
        ]);
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": raw.len(),
            "digest": digest.as_str(),
            "platform": {"architecture": platform.architecture, "os": platform.os},
        }));
    }
    // As buildx's attestations are listed: not a platform.
    let mut attestation = entries[0].clone();
    attestation["platform"] = serde_json::json!({"architecture": "unknown", "os": "unknown"});
    entries.insert(0, attestation);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries,
    }))
    .unwrap();
    reg.put_manifest(
        "multi:latest",
        "application/vnd.oci.image.index.v1+json",
        &index,
    );
    let multi = reg.image("multi:latest");
    // A Docker manifest list of the same two images, made by skopeo.
    skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        &format!("docker://{multi}"),
        &format!("docker://{}", reg.image("list:v2s2")),
    ]);
    let list = reg.image("list:v2s2");
    let raw: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{list}"),
    ]))
    .unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    let list_amd64 = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == "amd64")
        .unwrap()["digest"]
        .clone();

    let (_d, puller) = store();
    let image = puller.pull(&multi, None, None).await.unwrap();
    assert_eq!(image.digest.as_str(), raw_digest(&multi, &[]));
    assert_eq!(image.manifest.as_str(), entries[1]["digest"]);
    let arm_info = inspect(&multi, &["--override-arch", "arm64"]);
    assert_eq!(arm_info["Architecture"], "arm64");
    let (_d, arm_store) = store_with(Options {
        platform: arm.clone(),
        ..Options::default()
    });
    let resolved = arm_store.resolve(&multi, None).await.unwrap();
    assert_eq!(resolved.manifest.as_str(), entries[2]["digest"]);

    let s390 = Platform {
        os: "linux".into(),
        architecture: "s390x".into(),
    };
    let (_d, other) = store_with(Options {
        platform: s390,
        ..Options::default()
    });
    match other.resolve(&multi, None).await {
        Err(OciError::WrongPlatform { found, wanted, .. }) => {
            assert_eq!(
                (found.as_str(), wanted.as_str()),
                ("linux/amd64, linux/arm64", "linux/s390x")
            );
        }
        other => panic!("{other:?}"),
    }
    let e = puller
        .pull(&reg.image("multi:arm64"), None, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, OciError::WrongPlatform { found, .. } if found == "linux/arm64"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("is for linux/arm64, not linux/amd64"),
        "{e}"
    );
    let from_list = puller.pull(&list, None, None).await.unwrap();
    assert_eq!(from_list.manifest.as_str(), list_amd64);
    assert_eq!(from_list.config, image.config);
}

#[tokio::test]
async fn list_shows_sizes_and_references_and_prune_keeps_what_is_in_use() {
    let reg = Registry::start();
    let (_d, builder) = store();
    let src = tempfile::tempdir().unwrap();
    busybox_tree(src.path());
    let base = builder.build_layer(src.path(), "").unwrap();
    let mut digests = Vec::new();
    for (name, code) in [("a", "print('a')"), ("b", "print('b')")] {
        let code_dir = tempfile::tempdir().unwrap();
        std::fs::write(code_dir.path().join("handler.py"), code).unwrap();
        let top = builder
            .build_layer(code_dir.path(), "home/app/function")
            .unwrap();
        let d = builder
            .build_image(&ImageSpec {
                layers: vec![base.clone(), top],
                ..ImageSpec::default()
            })
            .unwrap();
        let pushed = builder
            .push(&d, &reg.image(&format!("{name}:1")), None, None)
            .await
            .unwrap();
        // The shared base layer went up once.
        assert_eq!(pushed.skipped, if name == "a" { 0 } else { 1 }, "{name}");
        digests.push(d);
    }
    let (dir, puller) = store();
    let a = puller.pull(&reg.image("a:1"), None, None).await.unwrap();
    let b = puller.pull(&reg.image("b:1"), None, None).await.unwrap();
    assert_eq!(
        std::fs::read(b.layers[1].join("home/app/function/handler.py")).unwrap(),
        b"print('b')"
    );
    assert_eq!(
        a.layers[0], b.layers[0],
        "one unpacked copy of the shared layer"
    );
    let list = puller.list().unwrap();
    assert_eq!(list.len(), 2);
    for item in &list {
        assert!(
            item.unpacked && item.size > base.size && item.unpacked_size > item.size,
            "{item:?}"
        );
        let name = if item.digest == a.digest { "a" } else { "b" };
        assert_eq!(item.references, vec![reg.image(&format!("{name}:1"))]);
    }

    let pruned = puller
        .prune(&HashSet::from([a.digest.clone()]))
        .await
        .unwrap();
    assert_eq!((pruned.images, pruned.layers), (1, 1), "{pruned:?}");
    assert_eq!(
        pruned.blobs, 3,
        "b's manifest, config and code layer: {pruned:?}"
    );
    assert!(pruned.bytes > 0);
    assert_eq!(puller.image(&a.digest).unwrap(), a);
    assert!(matches!(
        puller.image(&b.digest),
        Err(OciError::NotCached(_))
    ));
    let pruned = puller.prune(&HashSet::new()).await.unwrap();
    assert_eq!((pruned.images, pruned.layers), (1, 2));
    for sub in ["blobs/sha256", "layers", "images"] {
        assert!(
            common::tree(&dir.path().join("images").join(sub)).is_empty(),
            "{sub}"
        );
    }
}
