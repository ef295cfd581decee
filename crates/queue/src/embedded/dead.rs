//! The embedded queue's dead-letter list: a small file rewritten whole on every change
//! (write a temporary file, fsync it, rename it over the old one, fsync the directory), so a
//! dead letter is durable before its call is acked from the log, and a crash leaves the old
//! list or the new one, never half of one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::codec::{get_dead, put_dead, Reader};
use crate::{DeadLetter, QueueError};

const FILE: &str = "dead-letters.bin";

/// The dead letters and their file.
pub(crate) struct DeadFile {
    path: PathBuf,
    pub(crate) letters: Vec<DeadLetter>,
}

impl DeadFile {
    /// Load the list from `dir` (empty if there is none).
    pub(crate) fn open(dir: &Path) -> Result<DeadFile, QueueError> {
        let path = dir.join(FILE);
        let mut letters = Vec::new();
        match fs::read(&path) {
            Ok(data) => {
                let mut pos = 0;
                while pos + 8 <= data.len() {
                    let len = u32::from_le_bytes([
                        data[pos],
                        data[pos + 1],
                        data[pos + 2],
                        data[pos + 3],
                    ]) as usize;
                    let crc = u32::from_le_bytes([
                        data[pos + 4],
                        data[pos + 5],
                        data[pos + 6],
                        data[pos + 7],
                    ]);
                    let end = pos + 8 + len;
                    if end > data.len() || crc32fast::hash(&data[pos + 8..end]) != crc {
                        return Err(QueueError::Corrupt(format!(
                            "{} is damaged at byte {pos}",
                            path.display()
                        )));
                    }
                    letters.push(get_dead(&mut Reader::new(&data[pos + 8..end]))?);
                    pos = end;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(DeadFile { path, letters })
    }

    /// Write `letters` durably in place of the current list.
    pub(crate) fn save(&mut self, letters: Vec<DeadLetter>) -> Result<(), QueueError> {
        let mut data = Vec::new();
        for d in &letters {
            let start = data.len();
            data.extend_from_slice(&[0u8; 8]);
            put_dead(&mut data, d);
            let len = (data.len() - start - 8) as u32;
            let crc = crc32fast::hash(&data[start + 8..]);
            data[start..start + 4].copy_from_slice(&len.to_le_bytes());
            data[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        }
        let tmp = self.path.with_extension("tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        self.letters = letters;
        Ok(())
    }
}
