//! The watchdog as a self-contained directory tree that runs on any root filesystem (glibc,
//! musl, distroless, scratch): `bin/virga-watchdog` and, in `lib/`, the shared libraries it
//! links and the dynamic loader, which starts it with `--library-path` so it never mixes its
//! libraries with the image's. `virga build --oci` puts it under `/virga` of the images it
//! builds; a sandbox running an image under the platform's watchdog (a Lambda image) mounts
//! it read-only at `/virga`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the tree appears inside an image or a sandbox.
pub const WATCHDOG_DIR: &str = "/virga";
/// The dynamic loader's name inside `lib/` (whatever the host calls it).
pub const LOADER: &str = "ld-linux-x86-64.so.2";

/// Why the tree could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GatherError {
    /// Copying a file or creating a directory failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `ldd` could not be run or failed.
    #[error("cannot list the watchdog's libraries with ldd (from libc-bin): {0}")]
    Ldd(String),
}

/// Copy `watchdog` to `dir/bin/virga-watchdog` and the libraries it links, with the loader
/// (as [`LOADER`]), to `dir/lib`, found by asking the loader itself (`ldd`).
pub fn gather(watchdog: &Path, dir: &Path) -> Result<(), GatherError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| GatherError::Io { what, path, source }
    };
    let (bin, lib) = (dir.join("bin"), dir.join("lib"));
    for d in [&bin, &lib] {
        fs::create_dir_all(d).map_err(io("create", d))?;
    }
    fs::copy(watchdog, bin.join("virga-watchdog")).map_err(io("copy", watchdog))?;
    let out = Command::new("ldd")
        .arg(watchdog)
        .output()
        .map_err(|e| GatherError::Ldd(e.to_string()))?;
    if !out.status.success() {
        return Err(GatherError::Ldd(format!(
            "ldd {}: {}",
            watchdog.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    for path in linked_libraries(&String::from_utf8_lossy(&out.stdout)) {
        let Some(file) = path.file_name() else {
            continue;
        };
        let file = if path.to_string_lossy().contains("ld-linux") {
            std::ffi::OsStr::new(LOADER)
        } else {
            file
        };
        fs::copy(&path, lib.join(file)).map_err(io("copy", &path))?;
    }
    Ok(())
}

/// The command that starts the watchdog of a tree mounted at `at`, through its own loader.
pub fn command(at: &str) -> Vec<String> {
    let lib = format!("{at}/lib");
    vec![
        format!("{lib}/{LOADER}"),
        "--library-path".into(),
        lib,
        format!("{at}/bin/virga-watchdog"),
    ]
}

/// The absolute paths in `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x...)` and the
/// loader's `/lib64/ld-linux-x86-64.so.2 (0x...)`.
fn linked_libraries(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line.trim(),
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_read() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n";
        assert_eq!(
            linked_libraries(out),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn the_command_starts_the_watchdog_through_its_loader() {
        assert_eq!(
            command("/virga"),
            [
                "/virga/lib/ld-linux-x86-64.so.2",
                "--library-path",
                "/virga/lib",
                "/virga/bin/virga-watchdog"
            ]
        );
    }
}
