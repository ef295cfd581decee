//! Shared machinery of the benchmarks: child processes that are always cleaned up (each
//! in its own process group, stopped by a Drop guard), the `wrk` load generator and its
//! `--latency` output, in-process latency samples and their statistics, free ports and
//! readiness polling.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a stopped process group gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Children that are running, for the interrupt handler.
#[derive(Default)]
struct Registry {
    /// Set by the interrupt handler: no new children from then on.
    stopping: bool,
    /// Process group leaders (`Proc`s), stopped with their groups.
    groups: Vec<libc::pid_t>,
    /// Plain children (wrk runs).
    plain: Vec<libc::pid_t>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    stopping: false,
    groups: Vec::new(),
    plain: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Spawns `cmd` and records it (as a process group leader when `group`), unless
/// virga-bench is being interrupted.
fn spawn_registered(cmd: &mut Command, group: bool) -> Result<Child> {
    let mut r = registry();
    if r.stopping {
        bail!("interrupted");
    }
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    if group {
        r.groups.push(pid);
    } else {
        r.plain.push(pid);
    }
    Ok(child)
}

/// True once an interrupt signal arrived.
pub fn interrupted() -> bool {
    registry().stopping
}

fn unregister(pid: libc::pid_t) {
    let mut r = registry();
    r.groups.retain(|&p| p != pid);
    r.plain.retain(|&p| p != pid);
}

/// Write end of the self-pipe the signal handler writes to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    // SAFETY: write(2) is async-signal-safe; the buffer is a live one-byte array.
    unsafe {
        libc::write(fd, [1u8].as_ptr().cast(), 1);
    }
}

/// On SIGINT, SIGTERM or SIGHUP: stop every running child (process groups first with
/// SIGTERM, then SIGKILL), remove `scratch`, exit 130. The handler only writes to a pipe;
/// a thread does the work. (Handlers, unlike blocked masks, are not inherited across exec.)
pub fn cleanup_on_signal(scratch: PathBuf) -> Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!(
            "cannot create the signal pipe: {}",
            std::io::Error::last_os_error()
        );
    }
    SIGNAL_PIPE.store(fds[1], Ordering::Relaxed);
    let handler = on_signal as extern "C" fn(libc::c_int);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs an async-signal-safe handler.
        if unsafe { libc::signal(sig, handler as libc::sighandler_t) } == libc::SIG_ERR {
            bail!("cannot install the handler of signal {sig}");
        }
    }
    let read_fd = fds[0];
    thread::spawn(move || {
        let mut byte = 0u8;
        // SAFETY: blocking read of one byte into a live buffer.
        while unsafe { libc::read(read_fd, (&mut byte as *mut u8).cast(), 1) } != 1 {}
        eprintln!("virga-bench: interrupted, stopping the processes it started");
        let (mut groups, plain) = {
            let mut r = registry();
            r.stopping = true;
            (r.groups.clone(), r.plain.clone())
        };
        for &pid in &plain {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        for &pg in &groups {
            signal_group(pg, libc::SIGTERM);
        }
        let all = groups.clone();
        let deadline = Instant::now() + STOP_GRACE;
        while !groups.is_empty() && Instant::now() < deadline {
            // SAFETY: non-blocking waitpid on our own children; -1 (already reaped) or
            // the pid (exited) both mean gone.
            groups.retain(|&pid| unsafe {
                libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) == 0
            });
            thread::sleep(Duration::from_millis(20));
        }
        for &pg in &all {
            signal_group(pg, libc::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&scratch);
        std::process::exit(130);
    });
    Ok(())
}

/// A child process in its own process group, killed with its group when dropped.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    first_line: Option<mpsc::Receiver<String>>,
    stopped: bool,
}

impl Proc {
    /// Starts `cmd` in a new process group, stdout piped, stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let err = File::create(log).with_context(|| format!("create {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .process_group(0);
        // SAFETY: the closure only calls prctl(2), which is async-signal-safe. It makes the
        // child get SIGTERM should virga-bench die without running its Drop guards.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let mut child = spawn_registered(&mut cmd, true)
            .with_context(|| format!("start {name} ({:?})", cmd.get_program()))?;
        // Read the first stdout line for the caller, then keep draining so the pipe never
        // fills up.
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            thread::spawn(move || {
                let mut lines = BufReader::new(out).lines();
                if let Some(Ok(line)) = lines.next() {
                    let _ = tx.send(line);
                }
                for _ in lines {}
            });
        }
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            first_line: Some(rx),
            stopped: false,
        })
    }

    /// The first line the process printed on stdout, waiting at most `timeout`.
    pub fn first_line(&mut self, timeout: Duration) -> Result<String> {
        let rx = self
            .first_line
            .take()
            .with_context(|| format!("{}: first stdout line already taken", self.name))?;
        match rx.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(_) => bail!(
                "{} printed no first line within {timeout:?}{}",
                self.name,
                self.log_tail()
            ),
        }
    }

    /// Fails, with the end of the process's log, if it has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited ({status}){}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The last lines of the process's stderr log, formatted for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n  ");
        if tail.is_empty() {
            String::new()
        } else {
            format!("; its log {} ends with:\n  {tail}", self.log.display())
        }
    }

    /// SIGTERM to the group, SIGKILL after a grace period, then reap.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let pgid = self.child.id() as libc::pid_t;
        signal_group(pgid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // Also takes down any member of the group the leader left behind.
        signal_group(pgid, libc::SIGKILL);
        let _ = self.child.wait();
        unregister(pgid);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal_group(pgid: libc::pid_t, sig: libc::c_int) {
    if pgid > 1 {
        // SAFETY: kill(2) on the process group of a child we started; errors (the group
        // is already gone) are harmless.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
/// Waits (up to 10 s) until something accepts connections on loopback `port`; `what` names
/// it in the error.
pub fn wait_listening(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{what} did not listen on {port} within 10 s");
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(l.local_addr()?.port())
}

/// POSTs `body` to `url` until it answers 200 (returning the answer), or fails after `timeout`.
pub fn wait_ok(url: &str, body: &str, timeout: Duration) -> Result<String> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let deadline = Instant::now() + timeout;
    loop {
        let last = match client.post(url).body(body.to_string()).send() {
            Ok(r) if r.status().is_success() => return Ok(r.text()?),
            Ok(r) => format!("HTTP {}: {}", r.status(), r.text().unwrap_or_default()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            bail!("{url} did not answer 200 within {timeout:?} (last: {last})");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Latency statistics of one measured series, all in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Completed requests per second (0 for in-process series).
    pub rps: f64,
    /// Mean latency.
    pub mean_us: f64,
    /// Median latency.
    pub p50_us: f64,
    /// 99th percentile latency.
    pub p99_us: f64,
    /// Number of requests or iterations measured.
    pub count: u64,
}

impl Stats {
    /// Statistics of sequential in-process samples (microseconds; the rate is one over
    /// their mean); `None` when there are none.
    pub fn from_samples(samples: &mut [f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let rank = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        let mean_us = samples.iter().sum::<f64>() / n as f64;
        Some(Stats {
            rps: 1e6 / mean_us.max(1e-9),
            mean_us,
            p50_us: rank(0.50),
            p99_us: rank(0.99),
            count: n as u64,
        })
    }
}

/// One `wrk` run's shape.
#[derive(Debug, Clone)]
pub struct Load {
    /// wrk threads (`-t`).
    pub threads: u32,
    /// Open connections (`-c`).
    pub connections: u32,
    /// Duration (`-d`).
    pub duration: Duration,
}

/// The `wrk` load generator, with a Lua script that POSTs a small body.
pub struct Wrk {
    script: PathBuf,
}

impl Wrk {
    /// Finds `wrk` and writes its POST script into `dir`.
    pub fn new(dir: &Path, body: &str) -> Result<Wrk> {
        let found = Command::new("wrk")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if found.is_err() {
            bail!("wrk is not installed: run scripts/setup --bench (it installs the Debian package wrk)");
        }
        let script = dir.join("post.lua");
        let lua = format!(
            "wrk.method = \"POST\"\nwrk.body = {}\nwrk.headers[\"Content-Type\"] = \"text/plain\"\n",
            serde_json::to_string(body)?
        );
        std::fs::write(&script, lua).with_context(|| format!("write {}", script.display()))?;
        Ok(Wrk { script })
    }

    /// Runs wrk against `url` and parses its `--latency` report.
    pub fn run(&self, url: &str, load: &Load) -> Result<Stats> {
        let secs = load.duration.as_secs().max(1);
        let mut cmd = Command::new("wrk");
        cmd.arg(format!("-t{}", load.threads))
            .arg(format!("-c{}", load.connections))
            .arg(format!("-d{secs}s"))
            .args(["--timeout", "10s", "--latency", "-s"])
            .arg(&self.script)
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = spawn_registered(&mut cmd, false).context("run wrk")?;
        let pid = child.id() as libc::pid_t;
        let out = child.wait_with_output();
        unregister(pid);
        let out = out.context("run wrk")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "wrk {url} failed ({}): {text}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let report = parse_wrk(&text).with_context(|| format!("parse wrk output:\n{text}"))?;
        if report.non2xx > 0 {
            bail!(
                "{url}: {} of {} responses were not 2xx/3xx:\n{text}",
                report.non2xx,
                report.stats.count
            );
        }
        if report.socket_errors * 100 > report.stats.count.max(1) {
            bail!("{url}: more than 1% socket errors:\n{text}");
        }
        Ok(report.stats)
    }
}

/// What `parse_wrk` reads from a wrk report.
#[derive(Debug, Clone, Copy)]
pub struct WrkReport {
    /// Throughput and latencies.
    pub stats: Stats,
    /// `Non-2xx or 3xx responses`.
    pub non2xx: u64,
    /// Sum of `Socket errors` (connect, read, write, timeout).
    pub socket_errors: u64,
}

/// Parses wrk's `--latency` output.
pub fn parse_wrk(text: &str) -> Result<WrkReport> {
    let mut rps = None;
    let mut mean = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut count = None;
    let mut non2xx = 0;
    let mut socket_errors = 0;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v, ..] => rps = Some(v.parse::<f64>().context("Requests/sec")?),
            ["Latency", avg, _stdev, _max, _pct] => mean = Some(parse_duration_us(avg)?),
            ["50%", v] => p50 = Some(parse_duration_us(v)?),
            ["99%", v] => p99 = Some(parse_duration_us(v)?),
            [n, "requests", "in", ..] => count = Some(n.parse::<u64>().context("requests")?),
            ["Non-2xx", "or", "3xx", "responses:", n] => non2xx = n.parse().context("Non-2xx")?,
            ["Socket", "errors:", rest @ ..] => {
                socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    let missing = |what: &str| format!("no {what} in wrk's output");
    Ok(WrkReport {
        stats: Stats {
            rps: rps.with_context(|| missing("Requests/sec"))?,
            mean_us: mean.with_context(|| missing("Latency line"))?,
            p50_us: p50.with_context(|| missing("50% line (was --latency given?)"))?,
            p99_us: p99.with_context(|| missing("99% line"))?,
            count: count.with_context(|| missing("request count"))?,
        },
        non2xx,
        socket_errors,
    })
}

/// Parses a wrk duration such as `612.00us`, `1.50ms`, `2.00s` or `1.00m` into microseconds.
pub fn parse_duration_us(s: &str) -> Result<f64> {
    let split = s
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in duration {s:?}"))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .with_context(|| format!("bad number in duration {s:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown unit {unit:?} in duration {s:?}"),
    };
    Ok(v * scale)
}

/// Reads a whole file into a string, naming it in the error.
pub fn read_text(path: &Path) -> Result<String> {
    let mut s = String::new();
    File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .with_context(|| format!("read {}", path.display()))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 5s test @ http://127.0.0.1:8080/function/echo
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   655.24us  234.11us   8.59ms   91.52%
    Req/Sec    12.34k     1.02k   14.00k    70.00%
  Latency Distribution
     50%  612.00us
     75%  701.00us
     90%  812.00us
     99%    1.50ms
  123456 requests in 5.00s, 12.34MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:  24691.20
Transfer/sec:      2.47MB
";

    #[test]
    fn parses_wrk_latency_report() {
        let r = parse_wrk(SAMPLE).unwrap();
        assert!((r.stats.rps - 24691.20).abs() < 1e-6);
        assert!((r.stats.mean_us - 655.24).abs() < 1e-6);
        assert!((r.stats.p50_us - 612.0).abs() < 1e-6);
        assert!((r.stats.p99_us - 1500.0).abs() < 1e-6);
        assert_eq!(r.stats.count, 123456);
        assert_eq!(r.non2xx, 7);
        assert_eq!(r.socket_errors, 3);
    }

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration_us("12.00us").unwrap(), 12.0);
        assert_eq!(parse_duration_us("2.00s").unwrap(), 2e6);
        assert_eq!(parse_duration_us("1.00m").unwrap(), 60e6);
        assert!(parse_duration_us("12").is_err());
        assert!(parse_duration_us("1.0xs").is_err());
    }

    #[test]
    fn rejects_output_without_latency_distribution() {
        let text = SAMPLE.replace("     50%  612.00us\n", "");
        assert!(parse_wrk(&text).is_err());
    }

    #[test]
    fn sample_statistics() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Stats::from_samples(&mut v).unwrap();
        assert_eq!(s.p50_us, 50.0);
        assert_eq!(s.p99_us, 99.0);
        assert_eq!(s.mean_us, 50.5);
        assert_eq!(s.count, 100);
        assert!(Stats::from_samples(&mut []).is_none());
    }
}
