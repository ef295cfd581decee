//! The embedded queue's dead letters: one file each in `DIR/dead/` (0600), holding a small
//! summary (the [`DeadLetterInfo`] the API lists) and then the call or result itself. A file
//! is written to a temporary name, fsynced, renamed and the directory fsynced, so a dead letter
//! is durable before its record is acked from the log, and a crash leaves it whole or absent.
//! Only the summaries are in memory; bodies are read back for a retry. Beyond the limit the
//! oldest dead letters are dropped.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::log::{private_dir, HEADER};
use crate::codec::{decode_dead, encode_dead, get_dead, Reader};
use crate::{DeadLetter, DeadLetterInfo, QueueError};

/// The list of the first format: every dead letter in one file.
const OLD_FILE: &str = "dead-letters.bin";
/// Largest summary read back (they are a few hundred bytes).
const MAX_SUMMARY: usize = 64 << 10;

struct Held {
    info: DeadLetterInfo,
    bytes: u64,
}

/// The dead letters and their directory.
pub(crate) struct DeadDir {
    dir: PathBuf,
    held: BTreeMap<u64, Held>,
    next: u64,
    bytes: u64,
    max: u64,
    max_bytes: u64,
}

fn framed(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// Read one frame of at most `max` bytes.
fn read_frame(r: &mut impl Read, max: usize, what: &Path) -> Result<Vec<u8>, QueueError> {
    let bad = || QueueError::Corrupt(format!("{} is damaged", what.display()));
    let mut head = [0u8; HEADER];
    r.read_exact(&mut head).map_err(|_| bad())?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > max {
        return Err(bad());
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(|_| bad())?;
    if crc32fast::hash(&buf) != crc {
        return Err(bad());
    }
    Ok(buf)
}

impl DeadDir {
    /// Load the summaries from `queue_dir/dead` (moving a list of the first format there).
    pub(crate) fn open(queue_dir: &Path, max: u64, max_bytes: u64) -> Result<DeadDir, QueueError> {
        let dir = queue_dir.join("dead");
        private_dir(&dir)?;
        let mut d = DeadDir {
            dir,
            held: BTreeMap::new(),
            next: 1,
            bytes: 0,
            max: max.max(1),
            max_bytes,
        };
        for e in fs::read_dir(&d.dir)? {
            let path = e?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(n) = name.strip_suffix(".dl").and_then(|n| n.parse::<u64>().ok()) {
                let mut f = File::open(&path)?;
                let bytes = f.metadata()?.len();
                let summary = read_frame(&mut f, MAX_SUMMARY, &path)?;
                let info: DeadLetterInfo = serde_json::from_slice(&summary)
                    .map_err(|e| QueueError::Corrupt(format!("{}: {e}", path.display())))?;
                d.bytes += bytes;
                d.held.insert(n, Held { info, bytes });
                d.next = d.next.max(n + 1);
            } else if name.ends_with(".tmp") {
                // A write that never finished: its record is still in the log.
                fs::remove_file(&path)?;
            }
        }
        d.migrate(&queue_dir.join(OLD_FILE))?;
        Ok(d)
    }

    fn migrate(&mut self, old: &Path) -> Result<(), QueueError> {
        let data = match fs::read(old) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut r = data.as_slice();
        while !r.is_empty() {
            let frame = read_frame(&mut r, data.len(), old)?;
            self.store(&get_dead(&mut Reader::new(&frame))?)?;
        }
        fs::remove_file(old)?;
        Ok(())
    }

    fn path(&self, n: u64) -> PathBuf {
        self.dir.join(format!("{n:012}.dl"))
    }

    /// Write `d` durably as the newest dead letter, dropping the oldest beyond the limits.
    pub(crate) fn store(&mut self, d: &DeadLetter) -> Result<(), QueueError> {
        let info = DeadLetterInfo::from(d);
        let summary = serde_json::to_vec(&info).map_err(|e| QueueError::Corrupt(e.to_string()))?;
        let payload = encode_dead(d);
        let mut data = Vec::with_capacity(2 * HEADER + summary.len() + payload.len());
        framed(&mut data, &summary);
        framed(&mut data, &payload);
        let n = self.next;
        let tmp = self.dir.join(format!("{n:012}.tmp"));
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        fs::rename(&tmp, self.path(n))?;
        File::open(&self.dir)?.sync_all()?;
        self.next += 1;
        let bytes = data.len() as u64;
        self.bytes += bytes;
        self.held.insert(n, Held { info, bytes });
        while self.held.len() as u64 > self.max || self.bytes > self.max_bytes {
            let Some((&oldest, h)) = self.held.first_key_value() else {
                break;
            };
            if oldest == n {
                break;
            }
            tracing::warn!(call = %h.info.id, "queue: dead-letter list full, dropping its oldest");
            self.remove(oldest)?;
        }
        Ok(())
    }

    /// Every summary, oldest first.
    pub(crate) fn list(&self) -> Vec<DeadLetterInfo> {
        self.held.values().map(|h| h.info.clone()).collect()
    }

    /// The number of the dead letter of call `id`.
    pub(crate) fn find(&self, id: &str) -> Option<u64> {
        self.held
            .iter()
            .find(|(_, h)| h.info.id == id)
            .map(|(&n, _)| n)
    }

    /// Read dead letter `n` back whole.
    pub(crate) fn load(&self, n: u64) -> Result<DeadLetter, QueueError> {
        let path = self.path(n);
        let mut f = File::open(&path)?;
        let limit = f.metadata()?.len() as usize;
        read_frame(&mut f, MAX_SUMMARY, &path)?;
        decode_dead(&Bytes::from(read_frame(&mut f, limit, &path)?))
    }

    /// Delete dead letter `n`.
    pub(crate) fn remove(&mut self, n: u64) -> Result<(), QueueError> {
        if let Some(h) = self.held.remove(&n) {
            self.bytes = self.bytes.saturating_sub(h.bytes);
            fs::remove_file(self.path(n))?;
        }
        Ok(())
    }

    /// Delete them all; returns how many there were.
    pub(crate) fn purge(&mut self) -> Result<usize, QueueError> {
        let n = self.held.len();
        let all: Vec<u64> = self.held.keys().copied().collect();
        for k in all {
            self.remove(k)?;
        }
        File::open(&self.dir)?.sync_all()?;
        Ok(n)
    }

    /// How many there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{put_call, sample_call, sample_result, Writer};
    use crate::Failed;

    fn dead(failed: Failed) -> DeadLetter {
        DeadLetter {
            failed,
            reason: "503 after 3 attempts".into(),
            status: 503,
            failed_ms: 9,
        }
    }

    #[test]
    fn stored_listed_loaded_capped_and_migrated() {
        let dir = tempfile::tempdir().unwrap();
        // A list of the first format is moved over.
        let mut old = Vec::new();
        let mut payload = Vec::new();
        let mut w = Writer(&mut payload);
        w.u16(502);
        w.u64(1);
        w.bytes(b"old");
        put_call(&mut payload, &sample_call("old-1"));
        framed(&mut old, &payload);
        fs::write(dir.path().join(OLD_FILE), old).unwrap();
        let mut d = DeadDir::open(dir.path(), 3, 1 << 20).unwrap();
        assert!(!dir.path().join(OLD_FILE).exists());
        assert_eq!(d.list()[0].id, "old-1");
        d.store(&dead(Failed::Call(sample_call("c")))).unwrap();
        d.store(&dead(Failed::Callback(sample_result("r"))))
            .unwrap();
        let list = d.list();
        assert_eq!(list.len(), 3);
        assert_eq!(
            (list[2].kind.as_str(), list[2].id.as_str()),
            ("callback", "r")
        );
        let n = d.find("r").unwrap();
        assert_eq!(
            d.load(n).unwrap(),
            dead(Failed::Callback(sample_result("r")))
        );
        // Over the limit of 3, the oldest goes.
        d.store(&dead(Failed::Call(sample_call("c2")))).unwrap();
        let ids: Vec<String> = d.list().into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["c", "r", "c2"]);
        drop(d);
        let mut d = DeadDir::open(dir.path(), 3, 1 << 20).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d.purge().unwrap(), 3);
        assert_eq!(DeadDir::open(dir.path(), 3, 1 << 20).unwrap().len(), 0);
    }
}
