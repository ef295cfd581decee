//! Hostile layers, built by hand with the tar crate and served by a real registry: each is
//! refused with a message naming the entry (or contained, for links, which a rootfs needs),
//! nothing is kept of a refused layer, and nothing outside the layer store is written.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{layer, store, store_with, tree, Entry, Registry};
use virga_oci::{BuiltLayer, Digest, ImageSpec, Images, OciError, Options};

/// Push an image of the one layer `blob` as `name` and return its reference.
async fn serve(reg: &Registry, name: &str, blob: &[u8]) -> String {
    let (_d, builder) = store();
    let l = builder.add_layer(blob).unwrap();
    serve_layer(reg, &builder, name, l).await
}

async fn serve_layer(reg: &Registry, builder: &Images, name: &str, l: BuiltLayer) -> String {
    let digest = builder
        .build_image(&ImageSpec {
            layers: vec![l],
            ..ImageSpec::default()
        })
        .unwrap();
    let target = reg.image(name);
    builder.push(&digest, &target, None, None).await.unwrap();
    target
}

/// Nothing of a refused pull stays in the store but its manifest and config.
fn assert_nothing_kept(dir: &Path, layer: &str) {
    let root = dir.join("images");
    assert!(
        tree(&root.join("layers")).is_empty(),
        "{:?}",
        tree(&root.join("layers"))
    );
    assert!(
        tree(&root.join("tmp")).is_empty(),
        "{:?}",
        tree(&root.join("tmp"))
    );
    assert!(tree(&root.join("images")).is_empty());
    let hex = layer.trim_start_matches("sha256:");
    assert!(
        !root.join("blobs/sha256").join(hex).exists(),
        "the refused blob was kept"
    );
}

#[tokio::test]
async fn hostile_entries_are_refused_naming_the_entry_and_leave_nothing() {
    let reg = Registry::start();
    let cases: Vec<(&str, Vec<Entry>, &str, &str)> = vec![
        (
            "dotdot",
            vec![Entry::File("../evil", 0o644, b"x")],
            "entry ../evil",
            "'..'",
        ),
        (
            "abs",
            vec![Entry::File("/etc/evil", 0o644, b"x")],
            "entry /etc/evil",
            "absolute path",
        ),
        (
            "hard-abs",
            vec![Entry::HardLink("h", "/etc/passwd")],
            "entry h",
            "hard link",
        ),
        (
            "hard-up",
            vec![Entry::HardLink("h", "../../../etc/passwd")],
            "entry h",
            "hard link",
        ),
        (
            "hard-through-link",
            vec![
                Entry::Symlink("l", "/etc"),
                Entry::HardLink("h", "l/passwd"),
            ],
            "entry h",
            "not an earlier file of this layer",
        ),
        (
            "device",
            vec![Entry::Char("dev/mem", 1, 1)],
            "entry dev/mem",
            "device node 1:1",
        ),
    ];
    for (name, entries, entry, what) in cases {
        let blob = layer(&entries);
        let target = serve(&reg, &format!("{name}:1"), &blob).await;
        let (dir, images) = store();
        match images.pull(&target, None, None).await {
            Err(e @ OciError::BadLayer { .. }) => {
                let m = e.to_string();
                assert!(m.contains(entry) && m.contains(what), "{name}: {m}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert_nothing_kept(dir.path(), Digest::of(&blob).as_str());
    }
    assert!(!Path::new("/etc/evil").exists());
}

#[tokio::test]
async fn links_are_kept_but_never_followed_out_and_special_bits_are_dropped() {
    let reg = Registry::start();
    let host = tempfile::tempdir().unwrap();
    let host_dir = host.path().display().to_string();
    let entries = vec![
        Entry::Symlink("out", &host_dir),
        Entry::File("out/pwned", 0o644, b"abs"),
        Entry::Symlink("up", "../../../../../.."),
        Entry::Dir("up/upd/", 0o755),
        Entry::File("up/upd/pwned", 0o644, b"up"),
        Entry::File("bin/su", 0o4755, b"#!/bin/sh\n"),
        Entry::Dir("shared/", 0o2775),
        Entry::Dir("tmp/", 0o1777),
        Entry::File("a", 0o644, b"same"),
        Entry::HardLink("b", "a"),
        Entry::Fifo("run/fifo"),
    ];
    let target = serve(&reg, "links:1", &layer(&entries)).await;
    let (_d, images) = store();
    let image = images.pull(&target, None, None).await.unwrap();
    let root = &image.layers[0];
    // Writing through `out` and `up` landed inside the layer, as inside a container root.
    assert!(tree(host.path()).is_empty(), "{:?}", tree(host.path()));
    assert_eq!(
        std::fs::read(root.join(host_dir.trim_start_matches('/')).join("pwned")).unwrap(),
        b"abs"
    );
    assert_eq!(std::fs::read(root.join("upd/pwned")).unwrap(), b"up");
    assert_eq!(
        std::fs::read_link(root.join("out")).unwrap(),
        Path::new(&host_dir)
    );
    let mode = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(
        (mode("bin/su"), mode("shared"), mode("tmp")),
        (0o755, 0o775, 0o1777)
    );
    let (a, b) = (
        std::fs::metadata(root.join("a")).unwrap(),
        std::fs::metadata(root.join("b")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &std::fs::metadata(root.join("run/fifo"))
            .unwrap()
            .file_type()
    ));
    assert_eq!(
        std::fs::metadata(root.join("a")).unwrap().mtime(),
        1_600_000_000
    );
}

#[tokio::test]
async fn oversized_layers_and_content_that_does_not_match_its_digest_are_refused() {
    let reg = Registry::start();
    let big = vec![7u8; 3 << 20];
    let blob = layer(&[Entry::File("big", 0o644, &big)]);
    let target = serve(&reg, "big:1", &blob).await;
    let (dir, small) = store_with(Options {
        max_image_bytes: 2 << 20,
        ..Options::default()
    });
    match small.pull(&target, None, None).await {
        Err(e @ OciError::TooLarge(_)) => {
            assert!(e.to_string().contains(&(2u64 << 20).to_string()), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert_nothing_kept(dir.path(), Digest::of(&blob).as_str());

    // The registry's copy of the blob is changed on its disk (same size).
    let blob = layer(&[Entry::File("f", 0o644, b"original content")]);
    let target = serve(&reg, "tampered:1", &blob).await;
    let stored = reg.blob_file(&Digest::of(&blob));
    let mut other = layer(&[Entry::File("f", 0o644, b"tampered content")]);
    other.resize(blob.len(), 0);
    std::fs::write(&stored, &other).unwrap();
    let (dir, images) = store();
    match images.pull(&target, None, None).await {
        Err(OciError::DigestMismatch {
            expected, actual, ..
        }) => {
            assert_eq!(expected, Digest::of(&blob).as_str());
            assert_eq!(actual, Digest::of(&other).as_str());
        }
        other => panic!("{other:?}"),
    }
    assert_nothing_kept(dir.path(), Digest::of(&blob).as_str());

    // A config whose diff id does not match the layer's content.
    let (_d, builder) = store();
    let mut l = builder
        .add_layer(&layer(&[Entry::File("g", 0o644, b"g")]))
        .unwrap();
    l.diff_id = Digest::of(b"something else");
    let target = serve_layer(&reg, &builder, "diffid:1", l.clone()).await;
    let (dir, images) = store();
    match images.pull(&target, None, None).await {
        Err(e @ OciError::DigestMismatch { .. }) => {
            assert!(e.to_string().contains("diff id"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert_nothing_kept(dir.path(), l.digest.as_str());
}
