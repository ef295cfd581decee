//! The embedded queue's append-only log: numbered segment files of checksummed records (`Put`
//! a call, `Result` of a call, `Ack` either). One writer thread owns the files and does group
//! commit: it takes every batch waiting in its channel, writes them with one `write`, makes them
//! durable with one `fdatasync`, then answers all their senders with where their records
//! landed, so many concurrent accepts share one sync. It also rotates segments and deletes the
//! oldest ones once every record they put is acked. Records are read back from their segment
//! when delivered ([`read_record`]); [`replay`] streams the segments at start, keeping only
//! each pending record's location and index fields, and cuts off a torn tail left by a crash.
//! Every file is created 0600.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::codec::{put_call, put_result, Reader, Writer};
use crate::{Call, CallResult, QueueError};

pub(crate) const KIND_PUT: u8 = 1;
const KIND_ACK: u8 = 2;
pub(crate) const KIND_RESULT: u8 = 3;
/// Frame header: payload length and CRC-32 of the payload.
pub(crate) const HEADER: usize = 8;
/// Bytes of a record replay reads to index it: kind, seq, not-before, then the id, function
/// and queue every call and result starts with (ids are at most 256 bytes, names 64).
const INDEX_PREFIX: usize = 4096;
/// Unit of streamed reads at replay.
const CHUNK: usize = 64 << 10;

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

/// Append a `Result` record: result `seq` of a call, its callback not due before `not_before_ms`.
pub(crate) fn result_record(out: &mut Vec<u8>, seq: u64, not_before_ms: u64, r: &CallResult) {
    frame(out, |buf| {
        let mut w = Writer(buf);
        w.u8(KIND_RESULT);
        w.u64(seq);
        w.u64(not_before_ms);
        put_result(buf, r);
    });
}

/// Append an `Ack` record: call or result `seq` is done.
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

/// Where a record is: its segment, offset and length (frame header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub(crate) segment: u64,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

/// Where a batch's first byte landed: segment and offset.
pub(crate) type Landed = (u64, u64);

/// One write for the writer thread.
pub(crate) struct Batch {
    /// Encoded records.
    pub(crate) data: Vec<u8>,
    /// Sequence numbers this batch puts.
    pub(crate) puts: Vec<u64>,
    /// Sequence numbers this batch acks.
    pub(crate) acks: Vec<u64>,
    /// Told where the batch landed once it is durable (or why it failed).
    pub(crate) done: Option<oneshot::Sender<Result<Landed, String>>>,
}

/// A pending record as replay found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Indexed {
    /// `KIND_PUT` or `KIND_RESULT`.
    pub(crate) kind: u8,
    /// Not to be handed out before this time (0: now).
    pub(crate) not_before: u64,
    /// Function name.
    pub(crate) function: String,
    /// Queue name.
    pub(crate) queue: String,
    /// Where it is.
    pub(crate) loc: Loc,
}

/// What the segments held at start.
pub(crate) struct Replayed {
    /// Records put and not acked, by sequence number.
    pub(crate) pending: BTreeMap<u64, Indexed>,
    /// Highest sequence number seen.
    pub(crate) max_seq: u64,
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

/// Create `dir` (0700) if needed.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Open a file for appending, created 0600.
pub(crate) fn open_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Stream every segment in `dir`; a torn or corrupt tail is cut off (it was never acknowledged).
pub(crate) fn replay(dir: &Path) -> Result<Replayed, QueueError> {
    private_dir(dir)?;
    let segments = list_segments(dir)?;
    let mut r = Replayed {
        pending: BTreeMap::new(),
        max_seq: 0,
        segments: segments.clone(),
    };
    for (i, &n) in segments.iter().enumerate() {
        let path = segment_path(dir, n);
        // Files written before segments were created 0600.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        let (good, len) = scan_segment(&path, n, &mut r)?;
        if good < len {
            tracing::warn!(
                segment = %path.display(),
                offset = good,
                "queue log: cutting off a torn or corrupt tail of {} bytes",
                len - good
            );
            if i + 1 == segments.len() {
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(good)?;
                f.sync_all()?;
            }
        }
    }
    Ok(r)
}

/// Index one segment's records, reading it in chunks; returns the length of its intact prefix
/// and the file's length.
fn scan_segment(path: &Path, segment: u64, r: &mut Replayed) -> Result<(u64, u64), QueueError> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut rd = BufReader::with_capacity(CHUNK, file);
    let mut prefix = Vec::with_capacity(INDEX_PREFIX);
    let mut chunk = vec![0u8; CHUNK];
    let mut pos = 0u64;
    while pos + HEADER as u64 <= len {
        let mut head = [0u8; HEADER];
        if rd.read_exact(&mut head).is_err() {
            break;
        }
        let plen = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if pos + (HEADER as u64) + u64::from(plen) > len {
            break;
        }
        let mut hasher = crc32fast::Hasher::new();
        let mut left = plen as usize;
        prefix.resize(left.min(INDEX_PREFIX), 0);
        if rd.read_exact(&mut prefix).is_err() {
            break;
        }
        hasher.update(&prefix);
        left -= prefix.len();
        while left > 0 {
            let n = left.min(CHUNK);
            if rd.read_exact(&mut chunk[..n]).is_err() {
                return Ok((pos, len));
            }
            hasher.update(&chunk[..n]);
            left -= n;
        }
        let loc = Loc {
            segment,
            offset: pos,
            len: HEADER as u32 + plen,
        };
        if hasher.finalize() != crc || index_record(&prefix, loc, r).is_err() {
            break;
        }
        pos += u64::from(loc.len);
    }
    Ok((pos, len))
}

/// Apply one record from its first bytes.
fn index_record(prefix: &[u8], loc: Loc, r: &mut Replayed) -> Result<(), QueueError> {
    let mut rd = Reader::new(prefix);
    let kind = rd.u8()?;
    let seq = rd.u64()?;
    r.max_seq = r.max_seq.max(seq);
    match kind {
        KIND_PUT | KIND_RESULT => {
            let not_before = rd.u64()?;
            rd.u8()?; // format version
            rd.string()?; // id
            let function = rd.string()?;
            let queue = rd.string()?;
            r.pending.insert(
                seq,
                Indexed {
                    kind,
                    not_before,
                    function,
                    queue,
                    loc,
                },
            );
        }
        KIND_ACK => {
            r.pending.remove(&seq);
        }
        k => return Err(QueueError::Corrupt(format!("unknown record kind {k}"))),
    }
    Ok(())
}

/// Read the record at `loc` back, checking its frame; returns its payload.
pub(crate) fn read_record(dir: &Path, loc: Loc) -> Result<Bytes, QueueError> {
    let file = File::open(segment_path(dir, loc.segment))?;
    let mut buf = vec![0u8; loc.len as usize];
    file.read_exact_at(&mut buf, loc.offset)?;
    let bad = || {
        QueueError::Corrupt(format!(
            "record at {}:{} is damaged",
            loc.segment, loc.offset
        ))
    };
    if buf.len() < HEADER {
        return Err(bad());
    }
    let plen = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if plen + HEADER != buf.len() || crc32fast::hash(&buf[HEADER..]) != crc {
        return Err(bad());
    }
    Ok(Bytes::from(buf).slice(HEADER..))
}

/// The sending side of the writer thread.
#[derive(Clone)]
pub(crate) struct LogHandle {
    tx: mpsc::UnboundedSender<Batch>,
    syncs: Arc<AtomicU64>,
}

impl LogHandle {
    /// Write `batch` and wait until it is durable; returns where it landed.
    pub(crate) async fn write(&self, mut batch: Batch) -> Result<Landed, QueueError> {
        let (tx, rx) = oneshot::channel();
        batch.done = Some(tx);
        self.tx.send(batch).map_err(|_| QueueError::Closed)?;
        match rx.await {
            Ok(Ok(at)) => Ok(at),
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
    let mut seg_of = HashMap::with_capacity(replayed.pending.len());
    for (&seq, p) in &replayed.pending {
        *live.entry(p.loc.segment).or_default() += 1;
        seg_of.insert(seq, p.loc.segment);
    }
    let current = replayed.segments.last().copied().unwrap_or(1);
    live.entry(current).or_default();
    let path = segment_path(dir, current);
    let file = open_private(&path)?;
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
        seg_of,
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
            // Large bodies pass through: do not keep their buffer around.
            if buf.capacity() > 1 << 20 {
                buf = Vec::new();
            }
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
            let mut at = result.as_ref().map_or((0, 0), |&start| start);
            for b in batches {
                if let Some(done) = b.done {
                    let _ = done.send(result.clone().map(|_| at));
                }
                at.1 += b.data.len() as u64;
            }
        }
    }

    /// Write `data` durably; returns where it starts.
    fn append(&mut self, data: &[u8]) -> std::io::Result<Landed> {
        if self.size >= self.segment_bytes {
            self.rotate()?;
        }
        let start = (self.current, self.size);
        if let Err(e) = self
            .file
            .write_all(data)
            .and_then(|()| self.file.sync_data())
        {
            // Do not append after a partial write: later records would sit behind garbage.
            let _ = self.file.set_len(self.size);
            return Err(e);
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.size += data.len() as u64;
        Ok(start)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let next = self.current + 1;
        let file = open_private(&segment_path(&self.dir, next))?;
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
    use crate::codec::{get_call, sample_call};

    fn batch(data: Vec<u8>, puts: Vec<u64>, acks: Vec<u64>) -> Batch {
        Batch {
            data,
            puts,
            acks,
            done: None,
        }
    }

    /// Read the call at `loc` back.
    fn call_at(dir: &Path, loc: Loc) -> Call {
        let payload = read_record(dir, loc).unwrap();
        let mut r = Reader::over(&payload);
        assert_eq!(r.u8().unwrap(), KIND_PUT);
        r.skip(16).unwrap();
        get_call(&mut r).unwrap()
    }

    #[tokio::test]
    async fn replays_puts_minus_acks_and_cuts_torn_tails() {
        let dir = tempfile::tempdir().unwrap();
        let r = replay(dir.path()).unwrap();
        let log = start_writer(dir.path(), &r, 1 << 20).unwrap();
        let mut landed = Vec::new();
        for seq in 1..=3 {
            let mut d = Vec::new();
            put_record(&mut d, seq, 0, &sample_call(&format!("c{seq}")));
            landed.push(log.write(batch(d, vec![seq], vec![])).await.unwrap());
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
        let third = &r.pending[&3];
        assert_eq!((third.kind, third.function.as_str()), (KIND_PUT, "echo"));
        assert_eq!((third.loc.segment, third.loc.offset), landed[2]);
        assert_eq!(call_at(dir.path(), third.loc), sample_call("c3"));
        assert_eq!(r.max_seq, 3);
        let len_after = fs::metadata(&seg).unwrap().len();
        assert!(replay(dir.path()).is_ok());
        assert_eq!(fs::metadata(&seg).unwrap().len(), len_after);
    }

    #[tokio::test]
    async fn large_records_are_streamed_and_read_back_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let r = replay(dir.path()).unwrap();
        let log = start_writer(dir.path(), &r, 1 << 30).unwrap();
        let mut big = sample_call("big");
        big.body = Bytes::from(vec![7u8; 3 * CHUNK + 11]);
        for seq in 1..=2 {
            let mut d = Vec::new();
            put_record(&mut d, seq, 5, &big);
            log.write(batch(d, vec![seq], vec![])).await.unwrap();
        }
        drop(log);
        let r = replay(dir.path()).unwrap();
        assert_eq!(r.pending.len(), 2);
        let second = &r.pending[&2];
        assert_eq!(second.not_before, 5);
        assert_eq!(call_at(dir.path(), second.loc), big);
        let seg = segment_path(dir.path(), 1);
        assert_eq!(
            fs::metadata(&seg).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // A damaged body is found when the record is read back.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_at(b"X", second.loc.offset + 100).unwrap();
        assert!(read_record(dir.path(), second.loc).is_err());
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
