//! The store on a real full file system: the data directory is a small tmpfs (tests run as
//! root), filled to the last page. A deploy then gets a clear 507, `/healthz` says 503 while
//! the store cannot write, and once space is freed both work again without a restart.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use reqwest::Method;
use serde_json::json;
use virga_testkit::Platform;

/// A tmpfs mounted for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("run mount (the tests run as root)");
        assert!(ok.success(), "mount a tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Write `path` until the file system has no page left.
fn fill(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    for chunk in [1 << 20, 4096, 1] {
        let block = vec![7u8; chunk];
        while f.write_all(&block).is_ok() {}
    }
    let e = f.write_all(&[7]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
}

fn health(p: &Platform) -> (u16, String) {
    let r = p.anon(Method::GET, "/healthz").send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn a_full_disk_is_a_clear_error_and_the_store_recovers_once_space_is_freed() {
    let mnt = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(mnt.path(), "64m");
    let data = mnt.path().join("data");
    let p = Platform::start(&data);
    p.deploy_process("echo", "cat", json!({}));
    assert_eq!(health(&p), (200, "OK".to_string()));

    let filler = mnt.path().join("filler");
    fill(&filler);
    // A definition larger than any free page inside the database file.
    let big = json!({"service": "big", "envProcess": "cat",
                     "annotations": {"blob": "x".repeat(4 << 20)}});
    let r = p.send_json(Method::POST, "/system/functions", big.clone());
    assert_eq!(r.status, 507, "{}", r.text);
    assert!(
        r.text.contains("disk is full") && r.text.contains("free some space"),
        "{}",
        r.text
    );
    let (status, text) = health(&p);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("disk is full"), "{text}");
    // What was running keeps running.
    assert_eq!(p.invoke("echo", "still").text().unwrap(), "still");

    fs::remove_file(&filler).unwrap();
    assert_eq!(health(&p), (200, "OK".to_string()));
    p.deploy_process("after", "wc -c", json!({}));
    assert_eq!(p.invoke("after", "12345").text().unwrap().trim(), "5");
    let r = p.send_json(Method::POST, "/system/functions", big);
    assert_eq!(r.status, 202, "{}", r.text);
    let names: Vec<String> = p
        .get_json("/system/functions")
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["after", "big", "echo"]);
}
