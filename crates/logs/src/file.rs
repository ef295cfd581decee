//! `DIR/NAME.log`: a function's lines as JSON, one per line, rotated to `NAME.log.1` ..
//! `NAME.log.N` when it reaches its size limit. Write failures are reported once and the
//! file is retried on the next line, so a full disk never stops the in-memory logs. Files are
//! 0600 and their directory 0700: functions' output can hold anything.

use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::LogLine;

pub(crate) struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    kept: usize,
    file: Option<File>,
    size: u64,
    failing: bool,
}

impl RotatingFile {
    pub(crate) fn new(path: PathBuf, max_bytes: u64, kept: usize) -> RotatingFile {
        RotatingFile {
            path,
            max_bytes: max_bytes.max(1),
            kept,
            file: None,
            size: 0,
            failing: false,
        }
    }

    /// Append one line, rotating first if it would not fit.
    pub(crate) fn append(&mut self, line: &LogLine) {
        let Ok(mut bytes) = serde_json::to_vec(line) else {
            return;
        };
        bytes.push(b'\n');
        match self.write(&bytes) {
            Ok(()) => self.failing = false,
            Err(e) => {
                self.file = None;
                if !self.failing {
                    tracing::warn!("cannot write {}: {e}", self.path.display());
                    self.failing = true;
                }
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.open()?;
        }
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
            self.file = None;
            self.rotate()?;
            self.open()?;
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(bytes)?;
            self.size += bytes.len() as u64;
        }
        Ok(())
    }

    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
            // Also a directory an older version made with the default mode.
            std::fs::set_permissions(dir, Permissions::from_mode(0o700))?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        let meta = f.metadata()?;
        if meta.permissions().mode() & 0o777 != 0o600 {
            f.set_permissions(Permissions::from_mode(0o600))?;
        }
        self.size = meta.len();
        self.file = Some(f);
        Ok(())
    }

    /// NAME.log.(N-1) → NAME.log.N, ..., NAME.log → NAME.log.1; the oldest is dropped.
    fn rotate(&self) -> std::io::Result<()> {
        if self.kept == 0 {
            return std::fs::remove_file(&self.path);
        }
        for i in (1..self.kept).rev() {
            let from = numbered(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, numbered(&self.path, i + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))
    }
}

fn numbered(path: &Path, i: usize) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use crate::{LogConfig, LogHub, LogQuery};

    #[test]
    fn rotates_and_keeps_a_few_files() {
        let dir = tempfile::tempdir().unwrap();
        let hub = LogHub::new(LogConfig {
            dir: Some(dir.path().join("logs")),
            buffer_lines: 5,
            file_max_bytes: 400,
            files_kept: 2,
        });
        let f = hub.function("echo");
        for i in 0..40 {
            f.push("echo-1", &format!("line number {i}"));
        }
        let logs = dir.path().join("logs");
        let current = std::fs::read_to_string(logs.join("echo.log")).unwrap();
        assert!(current.len() <= 400, "{}", current.len());
        assert!(current.contains("\"text\":\"line number 39\""), "{current}");
        assert!(logs.join("echo.log.1").exists());
        assert!(logs.join("echo.log.2").exists());
        assert!(!logs.join("echo.log.3").exists());
        let mode = |p: &str| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(logs.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(""), 0o700);
        for f in ["echo.log", "echo.log.1", "echo.log.2"] {
            assert_eq!(mode(f), 0o600, "{f}");
        }
        let line: serde_json::Value =
            serde_json::from_str(current.lines().next().unwrap()).unwrap();
        assert_eq!(line["name"], "echo");
        // Memory keeps only the last five.
        assert_eq!(f.query(&LogQuery::default()).len(), 5);
    }
}
