//! The workspace's binaries under test. A test of another package cannot name them with
//! `env!("CARGO_BIN_EXE_…")`, so they are found next to the test executable:
//! `target/debug/deps/TEST` → `target/debug/NAME`.

use std::path::PathBuf;

/// Path of the workspace binary `name` in the test executable's target directory; panics,
/// saying what to do, if it was not built.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable sits in target/PROFILE/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`; scripts/test does)",
        path.display()
    );
    path
}

/// The `virga` CLI and platform.
pub fn virga_bin() -> PathBuf {
    bin("virga")
}

/// The `virga-watchdog` of every instance.
pub fn watchdog_bin() -> PathBuf {
    bin("virga-watchdog")
}

/// The test Lambda function on the Rust `lambda_runtime` crate (`crates/lambda-fixture`).
pub fn lambda_fixture_bin() -> PathBuf {
    bin("virga-lambda-fixture")
}
