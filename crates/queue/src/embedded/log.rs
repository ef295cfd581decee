//! The embedded queue's append-only log: numbered segment files of checksummed records (`Put`
//! a call, `Ack` a call). One writer thread owns the files and does group commit: it takes every
//! batch waiting in its channel, writes them with one `write`, makes them durable with one
//! `fdatasync`, then answers all their senders, so many concurrent accepts share one sync.
//! It also rotates segments and deletes the oldest ones once every call they hold is acked.
//! [`replay`] reads the segments back at start, truncating a torn tail left by a crash.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::codec::{get_call, put_call, Reader, Writer};
use crate::{Call, QueueError};

const KIND_PUT: u8 = 1;
const KIND_ACK: u8 = 2;
/// Frame header: payload length and CRC-32 of the payload.
const HEADER: usize = 8;

/// Append a `Put` record: call `seq`, not to be delivered before `not_before_ms`.
pub(crate) fn put_record(out: &mut Vec<u8>, seq: u64, not_before_ms: u64, call: &Call) {
    frame(out, |buf| {
        let mut w = Writer(buf);
        w.u8(KIND_PUT);
        w.u64(seq);
        w.u64(not_before_ms);
        put_call(buf, call);
    });
}

/// Append an `Ack` record: call `seq` is done.
pub(crate) fn ack_record(out: &mut Vec<u8>, seq: u64) {
    frame(out, |buf| {
        let mut w = Writer(buf);
        w.u8(KIND_ACK);
        w.u64(seq);
    });
}

fn frame(out: &mut Vec<u8>, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    fill(out);
    let payload = &out[start + HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One write for the writer thread.
pub(crate) struct Batch {
    /// Encoded records.
    pub(crate) data: Vec<u8>,
    /// Sequence numbers this batch puts.
    pub(crate) puts: Vec<u64>,
    /// Sequence numbers this batch acks.
    pub(crate) acks: Vec<u64>,
    /// Told once the batch is durable (or failed).
    pub(crate) done: Option<oneshot::Sender<Result<(), String>>>,
}

/// What the segments held at start.
pub(crate) struct Replayed {
    /// Calls put and not acked: seq → (not before, call).
    pub(crate) pending: BTreeMap<u64, (u64, Call)>,
    /// Highest sequence number seen.
    pub(crate) max_seq: u64,
    /// Which segment holds each pending call.
    seg_of: HashMap<u64, u64>,
    /// Existing segment numbers.
    segments: Vec<u64>,
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("seg-{n:012}.log"))
}

fn list_segments(dir: &Path) -> Result<Vec<u64>, QueueError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)? {
        let name = e?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Read every segment in `dir`; a torn or corrupt tail is cut off (it was never acknowledged).
pub(crate) fn replay(dir: &Path) -> Result<Replayed, QueueError> {
    fs::create_dir_all(dir)?;
    let segments = list_segments(dir)?;
    let mut r = Replayed {
        pending: BTreeMap::new(),
        max_seq: 0,
        seg_of: HashMap::new(),
        segments: segments.clone(),
    };
    for (i, &n) in segments.iter().enumerate() {
        let path = segment_path(dir, n);
        let data = fs::read(&path)?;
        let good = apply_segment(&data, n, &mut r);
        if good < data.len() {
            tracing::warn!(
                segment = %path.display(),
                offset = good,
                "queue log: cutting off a torn or corrupt tail of {} bytes",
                data.len() - good
            );
            if i + 1 == segments.len() {
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good as u64)?;
                f.sync_all()?;
            }
        }
    }
    Ok(r)
}

/// Apply one segment's records; returns the length of its intact prefix.
fn apply_segment(data: &[u8], segment: u64, r: &mut Replayed) -> usize {
    let mut pos = 0;
    while pos + HEADER <= data.len() {
        let len = u32::from_le_bytes([data[pos], data[pos + 1], data[pos + 2], data[pos + 3]]);
        let crc = u32::from_le_bytes([data[pos + 4], data[pos + 5], data[pos + 6], data[pos + 7]]);
        let end = pos + HEADER + len as usize;
        if end > data.len() || crc32fast::hash(&data[pos + HEADER..end]) != crc {
            return pos;
        }
        if apply_record(&data[pos + HEADER..end], segment, r).is_err() {
            return pos;
        }
        pos = end;
    }
    pos
}

fn apply_record(payload: &[u8], segment: u64, r: &mut Replayed) -> Result<(), QueueError> {
    let mut rd = Reader::new(payload);
    match rd.u8()? {
        KIND_PUT => {
            let seq = rd.u64()?;
            let not_before = rd.u64()?;
            let call = get_call(&mut rd)?;
            r.max_seq = r.max_seq.max(seq);
            r.pending.insert(seq, (not_before, call));
            r.seg_of.insert(seq, segment);
        }
        KIND_ACK => {
            let seq = rd.u64()?;
            r.max_seq = r.max_seq.max(seq);
            r.pending.remove(&seq);
            r.seg_of.remove(&seq);
        }
        k => return Err(QueueError::Corrupt(format!("unknown record kind {k}"))),
    }
    Ok(())
}

/// The sending side of the writer thread.
#[derive(Clone)]
pub(crate) struct LogHandle {
    tx: mpsc::UnboundedSender<Batch>,
    syncs: Arc<AtomicU64>,
}

impl LogHandle {
    /// Write `batch` and wait until it is durable.
    pub(crate) async fn write(&self, mut batch: Batch) -> Result<(), QueueError> {
        let (tx, rx) = oneshot::channel();
        batch.done = Some(tx);
        self.tx.send(batch).map_err(|_| QueueError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(QueueError::Io(std::io::Error::other(e))),
            Err(_) => Err(QueueError::Closed),
        }
    }

    /// Write `batch` without waiting (acks: losing one only means a redelivery).
    pub(crate) fn write_later(&self, batch: Batch) {
        let _ = self.tx.send(batch);
    }

    /// Number of fdatasyncs done so far.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

/// Start the writer thread appending after what `replayed` found.
pub(crate) fn start_writer(
    dir: &Path,
    replayed: &Replayed,
    segment_bytes: u64,
) -> Result<LogHandle, QueueError> {
    let mut live: BTreeMap<u64, usize> = replayed.segments.iter().map(|&n| (n, 0)).collect();
    for seg in replayed.seg_of.values() {
        *live.entry(*seg).or_default() += 1;
    }
    let current = replayed.segments.last().copied().unwrap_or(1);
    live.entry(current).or_default();
    let path = segment_path(dir, current);
    let file = OpenOptions::new().create(true).append(true).open(&path)?;
    let size = file.metadata()?.len();
    sync_dir(dir)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let syncs = Arc::new(AtomicU64::new(0));
    let mut w = WriterThread {
        dir: dir.to_path_buf(),
        segment_bytes,
        file,
        current,
        size,
        live,
        seg_of: replayed.seg_of.clone(),
        syncs: syncs.clone(),
    };
    std::thread::Builder::new()
        .name("virga-queue-log".into())
        .spawn(move || w.run(rx))?;
    Ok(LogHandle { tx, syncs })
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

struct WriterThread {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    current: u64,
    size: u64,
    /// Pending calls per segment.
    live: BTreeMap<u64, usize>,
    seg_of: HashMap<u64, u64>,
    syncs: Arc<AtomicU64>,
}

impl WriterThread {
    fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Batch>) {
        let mut buf = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut batches = vec![first];
            let mut bytes = batches[0].data.len();
            while bytes < 16 << 20 {
                match rx.try_recv() {
                    Ok(b) => {
                        bytes += b.data.len();
                        batches.push(b);
                    }
                    Err(_) => break,
                }
            }
            buf.clear();
            for b in &batches {
                buf.extend_from_slice(&b.data);
            }
            let result = self.append(&buf).map_err(|e| e.to_string());
            if result.is_ok() {
                for b in &batches {
                    self.account(b);
                }
                if let Err(e) = self.compact() {
                    tracing::warn!("queue log: compaction failed: {e}");
                }
            } else if let Err(e) = &result {
                tracing::error!("queue log: write failed: {e}");
            }
            for b in batches {
                if let Some(done) = b.done {
                    let _ = done.send(result.clone());
                }
            }
        }
    }

    fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.size >= self.segment_bytes {
            self.rotate()?;
        }
        self.file.write_all(data)?;
        self.file.sync_data()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.size += data.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let next = self.current + 1;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(segment_path(&self.dir, next))?;
        sync_dir(&self.dir)?;
        self.file = file;
        self.current = next;
        self.size = 0;
        self.live.entry(next).or_default();
        Ok(())
    }

    fn account(&mut self, b: &Batch) {
        for &seq in &b.puts {
            self.seg_of.insert(seq, self.current);
            *self.live.entry(self.current).or_default() += 1;
        }
        for seq in &b.acks {
            if let Some(seg) = self.seg_of.remove(seq) {
                if let Some(n) = self.live.get_mut(&seg) {
                    *n = n.saturating_sub(1);
                }
            }
        }
    }

    /// Delete the oldest segments while every call they put is acked. Only a prefix goes:
    /// a segment's acks may refer to calls in older ones, which must be gone first.
    fn compact(&mut self) -> std::io::Result<()> {
        while let Some((&oldest, &n)) = self.live.first_key_value() {
            if oldest == self.current || n > 0 {
                break;
            }
            fs::remove_file(segment_path(&self.dir, oldest))?;
            self.live.remove(&oldest);
            tracing::debug!(segment = oldest, "queue log: deleted a fully acked segment");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::sample_call;

    fn batch(data: Vec<u8>, puts: Vec<u64>, acks: Vec<u64>) -> Batch {
        Batch {
            data,
            puts,
            acks,
            done: None,
        }
    }

    #[tokio::test]
    async fn replays_puts_minus_acks_and_cuts_torn_tails() {
        let dir = tempfile::tempdir().unwrap();
        let r = replay(dir.path()).unwrap();
        let log = start_writer(dir.path(), &r, 1 << 20).unwrap();
        for seq in 1..=3 {
            let mut d = Vec::new();
            put_record(&mut d, seq, 0, &sample_call(&format!("c{seq}")));
            log.write(batch(d, vec![seq], vec![])).await.unwrap();
        }
        let mut d = Vec::new();
        ack_record(&mut d, 2);
        log.write(batch(d, vec![], vec![2])).await.unwrap();
        drop(log);
        // A torn record at the end, as a crash mid-write leaves it.
        let seg = segment_path(dir.path(), 1);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        let r = replay(dir.path()).unwrap();
        assert_eq!(r.pending.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(r.pending[&3].1.id, "c3");
        assert_eq!(r.max_seq, 3);
        let len_after = fs::metadata(&seg).unwrap().len();
        assert!(replay(dir.path()).is_ok());
        assert_eq!(fs::metadata(&seg).unwrap().len(), len_after);
    }

    #[tokio::test]
    async fn deletes_fully_acked_segments() {
        let dir = tempfile::tempdir().unwrap();
        let r = replay(dir.path()).unwrap();
        let log = start_writer(dir.path(), &r, 200).unwrap();
        for seq in 1..=6 {
            let mut d = Vec::new();
            put_record(&mut d, seq, 0, &sample_call("x"));
            log.write(batch(d, vec![seq], vec![])).await.unwrap();
        }
        assert!(list_segments(dir.path()).unwrap().len() >= 3);
        let mut d = Vec::new();
        for seq in 1..=5 {
            ack_record(&mut d, seq);
        }
        log.write(batch(d, vec![], (1..=5).collect()))
            .await
            .unwrap();
        // One more write so the writer rotates past the acks and compacts.
        let mut d = Vec::new();
        put_record(&mut d, 7, 0, &sample_call("y"));
        log.write(batch(d, vec![7], vec![])).await.unwrap();
        let segs = list_segments(dir.path()).unwrap();
        assert!(segs.len() <= 3, "segments left: {segs:?}");
        let r = replay(dir.path()).unwrap();
        assert_eq!(r.pending.keys().copied().collect::<Vec<_>>(), vec![6, 7]);
        assert!(log.syncs() >= 8);
    }
}
