//! Event triggers: how fast messages published to NATS (core) and to mosquitto (QoS 1) become
//! completed invocations of a no-op function, against the same number of calls made over
//! `/async-function/` in the same run, and the delay from a NATS request to the function's
//! answer on its reply subject, against a synchronous call.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::queue::{completed, drain, NatsServer};
use super::{shape, Ctx, BODY};
use crate::platform::Platform;
use crate::report::{Figure, Section, Target, Unit};
use crate::runner::{free_port, wait_ok, Stats};

/// Name for `--only`.
pub const NAME: &str = "triggers";

/// Section heading.
pub const TITLE: &str = "Event triggers: NATS and MQTT messages into a function";

/// What the figures mean.
pub const ABOUT: &str = "\
A no-op http-mode function (`virga-bench fast-upstream`) subscribed with `topic: bench-in` \
on a local `nats-server` and a local `mosquitto`. The baseline is the same calls made over \
`/async-function/` (wrk, completed by the workers, from the start of the load until the \
queue is empty). *NATS messages/s*: that many messages published on NATS core (one \
connection, never more than 4,000 ahead of the completed calls: NATS core has no flow \
control, a publisher that outruns the subscriber loses messages), completed per second from \
the first publish until the last invocation answered (target ≥ 0.8× the baseline); *MQTT messages/s*: the same with `mosquitto_pub -q 1 \
-l` (each message acked to the broker only once queued; mosquitto's in-flight window, \
`max_inflight_messages`, at 256, the receive maximum Virga asks for over MQTT 5). *Publish → answer*: one NATS \
request at a time on `bench-in`, the time until the function's answer arrives on the reply \
subject (durable queueing, delivery, invocation, publishing the reply), against one \
synchronous `/function/` call at a time.";

/// Measures the figures and fills the section.
pub fn run(ctx: &Ctx, s: &mut Section) -> Result<()> {
    let work = ctx.dir(NAME)?;
    let nats = NatsServer::start(&work)?;
    let mqtt = Mosquitto::start(&work);
    if let Err(e) = &mqtt {
        eprintln!("triggers: skipping MQTT: {e:#}");
    }
    let mut env = vec![("VIRGA_NATS_URL", nats.url.as_str())];
    if let Ok(m) = &mqtt {
        env.push(("VIRGA_MQTT_URL", m.url.as_str()));
    }
    let mut platform = Platform::start_with(
        &ctx.bins,
        &ctx.dir(&format!("{NAME}-up"))?,
        &ctx.isolation,
        &env,
    )?;
    let fprocess = format!("{} fast-upstream", ctx.bins.bench.to_string_lossy());
    platform.deploy_json(&json!({
        "service": "bench-noop",
        "envProcess": fprocess,
        "envVars": {"mode": "http", "upstream_url": "http://127.0.0.1:5000"},
        "annotations": {"topic": "bench-in"},
    }))?;
    if let Err(e) = wait_ok(
        &platform.function_url("bench-noop"),
        BODY,
        Duration::from_secs(30),
    ) {
        return Err(platform.explain(e));
    }
    let nats_port = nats.port;
    let mut conn = NatsConn::connect(nats_port)?;
    // The subscription is live once a request gets its answer.
    let deadline = Instant::now() + Duration::from_secs(30);
    while conn
        .request("bench-in", BODY.as_bytes(), Duration::from_secs(1))?
        .is_none()
    {
        if Instant::now() > deadline {
            bail!("the NATS trigger never answered");
        }
    }
    let (async_rate, n) = async_baseline(ctx, s, &platform)?;
    let nats_rate = paced_rate(&platform.url, n, &mut conn)?;
    s.figure(rate(
        "NATS core messages/s, no-op function",
        nats_rate,
        async_rate,
    ));
    if let Ok(m) = &mqtt {
        let mqtt_rate = delivered_rate(&platform.url, n, || m.publish_many("bench-in", n))?;
        s.figure(rate(
            "MQTT QoS 1 messages/s, no-op function",
            mqtt_rate,
            async_rate,
        ));
    }
    latency(ctx, s, &platform, &mut conn)?;
    Ok(())
}

fn rate(name: &str, value: f64, baseline: f64) -> Figure {
    Figure {
        name: name.into(),
        value_label: "trigger".into(),
        value,
        baseline_label: "/async-function/".into(),
        baseline,
        unit: Unit::ReqPerSec,
        target: Target::RatioAtLeast(0.8),
    }
}

/// Calls completed per second over `/async-function/` under wrk, and how many there were.
fn async_baseline(ctx: &Ctx, s: &mut Section, platform: &Platform) -> Result<(f64, u64)> {
    let load = &ctx.settings.throughput;
    let url = format!("{}/async-function/bench-noop", platform.url);
    ctx.warm(&url, load)?;
    drain(&platform.url, Duration::from_secs(300))?;
    let before = completed(&platform.url)?;
    let started = Instant::now();
    let acc = ctx.load(&url, load)?;
    s.measured(format!("/async-function accepts, {}", shape(load)), acc);
    drain(&platform.url, Duration::from_secs(300))?;
    let n = completed(&platform.url)? - before;
    Ok((n as f64 / started.elapsed().as_secs_f64(), n))
}

/// Run `publish` (which sends `n` messages) and return completed invocations per second
/// until `n` completed, or until progress stops for 5 s (NATS core may drop: at most once).
fn delivered_rate(base: &str, n: u64, publish: impl FnOnce() -> Result<()>) -> Result<f64> {
    drain(base, Duration::from_secs(300))?;
    let before = completed(base)?;
    let started = Instant::now();
    publish()?;
    let (mut last, mut last_change, mut done_at) = (before, Instant::now(), Instant::now());
    loop {
        let now = completed(base)?;
        if now != last {
            (last, last_change, done_at) = (now, Instant::now(), Instant::now());
        }
        if now - before >= n || last_change.elapsed() > Duration::from_secs(5) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let got = last - before;
    if got < n {
        eprintln!("triggers: {got} of {n} messages were delivered (the rest dropped)");
    }
    Ok(got as f64 / done_at.duration_since(started).as_secs_f64())
}

/// Messages not yet completed that the NATS publisher allows: NATS core has no flow control,
/// so a publisher that outruns the subscriber loses messages (at most once); pacing measures
/// the rate at which none is lost.
const NATS_WINDOW: u64 = 4_000;

/// Publish `n` NATS messages, never more than [`NATS_WINDOW`] ahead of the completed calls,
/// and return completed invocations per second.
fn paced_rate(base: &str, n: u64, conn: &mut NatsConn) -> Result<f64> {
    drain(base, Duration::from_secs(300))?;
    let before = completed(base)?;
    let started = Instant::now();
    let mut sent = 0;
    let mut done = 0;
    let mut last_change = Instant::now();
    while done < n {
        if sent < n && sent - done < NATS_WINDOW {
            let k = (n - sent).min(500);
            conn.publish_many("bench-in", k)?;
            sent += k;
            continue;
        }
        std::thread::sleep(Duration::from_millis(2));
        let now = completed(base)? - before;
        if now != done {
            (done, last_change) = (now, Instant::now());
        }
        if last_change.elapsed() > Duration::from_secs(5) {
            eprintln!("triggers: {done} of {n} paced NATS messages were delivered");
            break;
        }
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Publish → answer over NATS request/reply against one sync call at a time.
fn latency(ctx: &Ctx, s: &mut Section, platform: &Platform, conn: &mut NatsConn) -> Result<()> {
    let lat = &ctx.settings.latency;
    let url = platform.function_url("bench-noop");
    ctx.warm(&url, lat)?;
    let sync = ctx.load(&url, lat)?;
    let sync = s.measured(format!("no-op via /function/, {}", shape(lat)), sync);
    let mut samples = Vec::new();
    for _ in 0..ctx.settings.iterations / 4 {
        let t = Instant::now();
        if conn
            .request("bench-in", BODY.as_bytes(), Duration::from_secs(10))?
            .is_none()
        {
            bail!("a NATS request got no answer within 10 s");
        }
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let nats = Stats::from_samples(&mut samples).context("no request samples")?;
    let nats = s.measured("NATS request → answer, one at a time", nats);
    for (what, value, baseline) in [
        ("p50", nats.p50_us, sync.p50_us),
        ("p99", nats.p99_us, sync.p99_us),
    ] {
        s.figure(Figure {
            name: format!("NATS publish → answer {what}, one at a time"),
            value_label: "trigger".into(),
            value,
            baseline_label: "sync /function/".into(),
            baseline,
            unit: Unit::Micros,
            target: Target::None,
        });
    }
    Ok(())
}

/// A NATS client over the text protocol: publishes and request/reply.
struct NatsConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    inbox: u64,
}

impl NatsConn {
    fn connect(port: u16) -> Result<NatsConn> {
        let s = TcpStream::connect(("127.0.0.1", port)).context("connect to nats-server")?;
        s.set_nodelay(true)?;
        let mut c = NatsConn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            inbox: 0,
        };
        let mut info = String::new();
        c.reader.read_line(&mut info)?;
        c.writer.write_all(b"CONNECT {\"verbose\":false}\r\n")?;
        Ok(c)
    }

    /// Publish `n` small messages on `subject`, in large writes.
    fn publish_many(&mut self, subject: &str, n: u64) -> Result<()> {
        let one = format!("PUB {subject} {}\r\n{BODY}\r\n", BODY.len());
        let batch = one.repeat(1000);
        for _ in 0..n / 1000 {
            self.writer.write_all(batch.as_bytes())?;
        }
        self.writer
            .write_all(one.repeat((n % 1000) as usize).as_bytes())?;
        Ok(())
    }

    /// Publish `payload` with a fresh reply subject and wait up to `limit` for the answer.
    fn request(
        &mut self,
        subject: &str,
        payload: &[u8],
        limit: Duration,
    ) -> Result<Option<Vec<u8>>> {
        self.inbox += 1;
        let inbox = format!("_INBOX.bench.{}", self.inbox);
        let sid = self.inbox;
        let mut out = format!(
            "SUB {inbox} {sid}\r\nPUB {subject} {inbox} {}\r\n",
            payload.len()
        )
        .into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(format!("\r\nUNSUB {sid} 1\r\n").as_bytes());
        self.writer.write_all(&out)?;
        self.reader.get_ref().set_read_timeout(Some(limit))?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => bail!("nats-server closed the connection"),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            if line.starts_with("PING") {
                self.writer.write_all(b"PONG\r\n")?;
            } else if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest.trim_end().rsplit(' ').next().unwrap_or("0").parse()?;
                let mut body = vec![0; len + 2];
                self.reader.read_exact(&mut body)?;
                body.truncate(len);
                if rest.starts_with(&inbox) {
                    return Ok(Some(body));
                }
            }
        }
        Ok(None)
    }
}

/// A local mosquitto (no cap on queued messages, 256 unacked messages in flight to a client),
/// killed on drop.
struct Mosquitto {
    child: Child,
    url: String,
    port: u16,
}

impl Mosquitto {
    fn start(work: &Path) -> Result<Mosquitto> {
        let port = free_port()?;
        let conf = work.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 256\n"),
        )?;
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("mosquitto");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start mosquitto (scripts/setup --bench installs it)")?;
        crate::runner::wait_listening(port, "mosquitto")?;
        Ok(Mosquitto {
            child,
            url: format!("mqtt://127.0.0.1:{port}"),
            port,
        })
    }

    /// Publish `n` messages on `topic` with QoS 1 from one `mosquitto_pub -l`.
    fn publish_many(&self, topic: &str, n: u64) -> Result<()> {
        let mut child = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-q",
                "1",
                "-t",
                topic,
                "-l",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .context("run mosquitto_pub (scripts/setup --bench installs mosquitto-clients)")?;
        let mut stdin = child.stdin.take().context("mosquitto_pub's stdin")?;
        let lines = format!("{BODY}\n").repeat(n as usize);
        stdin.write_all(lines.as_bytes())?;
        drop(stdin);
        if !child.wait()?.success() {
            bail!("mosquitto_pub failed");
        }
        Ok(())
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
