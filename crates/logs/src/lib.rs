//! Function logs. Every line an instance writes to stdout or stderr is pushed here by the
//! provider with its instance id and the time it arrived; the hub keeps the last lines of each
//! function in memory (bounded), appends them to `DIR/NAME.log` as JSON lines (rotated at a
//! size, a few old files kept), and hands them to live followers through a broadcast channel.
//! The gateway reads it for `GET /system/logs`, filtering by instance, time and count.
//!
//! A follower is a [`Follower`]: it holds one broadcast receiver, so dropping it (the client
//! left) unsubscribes at once; [`LogHub::followers`] counts the receivers still open.

mod file;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;
use virga_types::split_key;

use file::RotatingFile;

/// Longest line kept, in bytes; longer ones are cut (at a character boundary).
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// How many new lines a slow follower may fall behind before it skips some.
const FOLLOW_BACKLOG: usize = 1024;

/// Settings of the log hub.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Directory of the `NAME.log` files; `None` keeps logs in memory only.
    pub dir: Option<PathBuf>,
    /// Lines kept in memory per function.
    pub buffer_lines: usize,
    /// Size at which `NAME.log` is rotated to `NAME.log.1`.
    pub file_max_bytes: u64,
    /// Rotated files kept (`NAME.log.1` ..= `NAME.log.N`).
    pub files_kept: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            dir: None,
            buffer_lines: 10_000,
            file_max_bytes: 10 << 20,
            files_kept: 3,
        }
    }
}

/// One line of a function's output, in the OpenFaaS log message shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Function name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Id of the instance that wrote it.
    pub instance: String,
    /// When the platform read it (RFC 3339 in JSON).
    pub timestamp: DateTime<Utc>,
    /// The line, without its newline.
    pub text: String,
}

/// Which lines a reader wants.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    /// Only lines of this instance.
    pub instance: Option<String>,
    /// Only lines at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only the last N of the matching lines.
    pub tail: Option<usize>,
}

impl LogQuery {
    fn matches(&self, line: &LogLine) -> bool {
        self.instance.as_deref().is_none_or(|i| i == line.instance)
            && self.since.is_none_or(|s| line.timestamp >= s)
    }
}

/// The logs of every function.
pub struct LogHub {
    cfg: LogConfig,
    functions: Mutex<HashMap<String, Arc<FunctionLog>>>,
}

impl std::fmt::Debug for LogHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHub")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl LogHub {
    /// A hub with `cfg`; the directory is created when the first line is written.
    pub fn new(cfg: LogConfig) -> LogHub {
        LogHub {
            cfg,
            functions: Mutex::new(HashMap::new()),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<FunctionLog>>> {
        self.functions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The log of function `name`, created empty if it has none yet.
    pub fn function(&self, name: &str) -> Arc<FunctionLog> {
        self.map()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(FunctionLog::new(name, &self.cfg)))
            .clone()
    }

    /// Drop the in-memory lines of a removed function (its files stay); followers end.
    pub fn forget(&self, name: &str) {
        self.map().remove(name);
    }

    /// Open follow streams over all functions.
    pub fn followers(&self) -> usize {
        self.map().values().map(|f| f.tx.receiver_count()).sum()
    }
}

struct Buffer {
    lines: VecDeque<Arc<LogLine>>,
    file: Option<RotatingFile>,
}

/// One function's log: recent lines, its file and its followers.
pub struct FunctionLog {
    name: String,
    capacity: usize,
    buf: Mutex<Buffer>,
    tx: broadcast::Sender<Arc<LogLine>>,
}

impl FunctionLog {
    fn new(name: &str, cfg: &LogConfig) -> FunctionLog {
        let file = cfg.dir.as_ref().map(|d| {
            RotatingFile::new(
                d.join(format!("{name}.log")),
                cfg.file_max_bytes,
                cfg.files_kept,
            )
        });
        FunctionLog {
            name: name.to_string(),
            capacity: cfg.buffer_lines.max(1),
            buf: Mutex::new(Buffer {
                lines: VecDeque::new(),
                file,
            }),
            tx: broadcast::channel(FOLLOW_BACKLOG).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The function's key (`name`, or `name.namespace`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Record one line written by `instance` now.
    pub fn push(&self, instance: &str, text: &str) {
        let (name, namespace) = split_key(&self.name);
        let line = Arc::new(LogLine {
            name: name.to_string(),
            namespace: namespace.to_string(),
            instance: instance.to_string(),
            timestamp: Utc::now(),
            text: cut(text, MAX_LINE_BYTES).to_string(),
        });
        let mut buf = self.lock();
        if let Some(f) = buf.file.as_mut() {
            f.append(&line);
        }
        if buf.lines.len() >= self.capacity {
            buf.lines.pop_front();
        }
        buf.lines.push_back(line.clone());
        // Sent under the lock, so a new follower sees every line exactly once.
        let _ = self.tx.send(line);
    }

    /// The kept lines matching `q`, oldest first.
    pub fn query(&self, q: &LogQuery) -> Vec<Arc<LogLine>> {
        select(&self.lock().lines, q)
    }

    /// The kept lines matching `q`, and a follower for every matching line after them.
    pub fn follow(&self, q: &LogQuery) -> (Vec<Arc<LogLine>>, Follower) {
        let buf = self.lock();
        let rx = self.tx.subscribe();
        let history = select(&buf.lines, q);
        let filter = LogQuery {
            instance: q.instance.clone(),
            since: q.since,
            tail: None,
        };
        (history, Follower { rx, filter })
    }
}

fn select(lines: &VecDeque<Arc<LogLine>>, q: &LogQuery) -> Vec<Arc<LogLine>> {
    let mut out: Vec<_> = lines.iter().filter(|l| q.matches(l)).cloned().collect();
    if let Some(n) = q.tail {
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
    }
    out
}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A live subscription to new lines of one function; dropping it unsubscribes.
pub struct Follower {
    rx: broadcast::Receiver<Arc<LogLine>>,
    filter: LogQuery,
}

impl Follower {
    /// The next matching line; `None` once the function's log is gone.
    pub async fn next(&mut self) -> Option<Arc<LogLine>> {
        loop {
            match self.rx.recv().await {
                Ok(line) if self.filter.matches(&line) => return Some(line),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!("log follower fell behind; skipped {n} lines");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(lines: usize) -> LogHub {
        LogHub::new(LogConfig {
            buffer_lines: lines,
            ..LogConfig::default()
        })
    }

    fn texts(lines: &[Arc<LogLine>]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn keeps_the_last_lines_and_filters() {
        let h = hub(3);
        let f = h.function("echo");
        for (i, inst) in ["a", "b", "a", "b"].iter().enumerate() {
            f.push(inst, &format!("line {i}"));
        }
        let all = f.query(&LogQuery::default());
        assert_eq!(texts(&all), ["line 1", "line 2", "line 3"]);
        let q = LogQuery {
            instance: Some("b".into()),
            ..LogQuery::default()
        };
        assert_eq!(texts(&f.query(&q)), ["line 1", "line 3"]);
        let q = LogQuery {
            tail: Some(1),
            ..LogQuery::default()
        };
        assert_eq!(texts(&f.query(&q)), ["line 3"]);
        let q = LogQuery {
            since: Some(all[1].timestamp),
            ..LogQuery::default()
        };
        assert_eq!(texts(&f.query(&q)), ["line 2", "line 3"]);
        let json = serde_json::to_value(&*all[0]).unwrap();
        assert_eq!(json["namespace"], "openfaas-fn");
        assert_eq!(json["instance"], "b");
        assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn cuts_long_lines_at_a_character() {
        assert_eq!(cut("héllo", 2), "h");
        assert_eq!(cut("abc", 10), "abc");
    }

    #[tokio::test]
    async fn followers_see_new_lines_and_unsubscribe_on_drop() {
        let h = hub(10);
        let f = h.function("echo");
        f.push("a", "old");
        let q = LogQuery {
            instance: Some("a".into()),
            ..LogQuery::default()
        };
        let (history, mut follower) = f.follow(&q);
        assert_eq!(texts(&history), ["old"]);
        assert_eq!(h.followers(), 1);
        f.push("b", "other instance");
        f.push("a", "new");
        assert_eq!(follower.next().await.unwrap().text, "new");
        drop(follower);
        assert_eq!(h.followers(), 0);

        let (_, mut follower) = f.follow(&LogQuery::default());
        drop(f);
        h.forget("echo");
        assert!(follower.next().await.is_none());
    }
}
