//! Real message brokers for the trigger tests, each on a free loopback port and killed on
//! drop: [`NatsServer`] (`nats-server` with JetStream), [`Mosquitto`] (the Debian package,
//! persistent), and [`NatsConn`], a NATS client speaking the text protocol over a socket.
//! Both brokers also start with a configuration of the test's (TLS with certificates from
//! [`crate::certs`], users and passwords).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A nats-server with JetStream (its store in a temporary directory), killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    conf: Option<PathBuf>,
}

impl NatsServer {
    /// Start one on a free port.
    pub fn start() -> NatsServer {
        NatsServer::start_conf(None)
    }

    /// Start one with `conf` as its configuration file's text (e.g. a `tls {}` block and an
    /// `authorization {}` block); address, port and store are set on the command line.
    pub fn start_with(conf: &str) -> NatsServer {
        NatsServer::start_conf(Some(conf))
    }

    fn start_conf(conf: Option<&str>) -> NatsServer {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = conf.map(|text| {
            let path = dir.path().join("nats.conf");
            std::fs::write(&path, text).unwrap();
            path
        });
        let mut s = NatsServer {
            child: None,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir,
            conf,
        };
        s.restart();
        s
    }

    /// Kill it (kill -9).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Start it again on the same port and store.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        let mut cmd = Command::new("nats-server");
        if let Some(conf) = &self.conf {
            cmd.arg("-c").arg(conf);
        }
        let child = cmd
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server (scripts/setup --test installs it)");
        self.child = Some(child);
        wait_for_port(self.port, "nats-server");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A mosquitto broker with persistence (QoS 1 messages of offline persistent sessions are
/// kept, without a cap on their number), killed when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    /// `mqtt://127.0.0.1:PORT`.
    pub url: String,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    /// What `mosquitto_pub` needs to reach it (TLS files, credentials).
    client_args: Vec<String>,
}

impl Mosquitto {
    /// Start one on a free port.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with("allow_anonymous true\n", "mqtt", Vec::new())
    }

    /// Start one whose listener has the settings `conf` (e.g. `cafile`, `certfile`,
    /// `keyfile`, `require_certificate true`, `password_file`, `allow_anonymous`), its URL
    /// with `scheme`; `client_args` are what `mosquitto_pub` needs to reach it.
    pub fn start_with(conf: &str, scheme: &str, client_args: Vec<String>) -> Mosquitto {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let conf = format!(
            "listener {port} 127.0.0.1\n{conf}persistence true\n\
             persistence_location {}/\nmax_queued_messages 0\nmax_inflight_messages 100\n\
             autosave_interval 1\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut m = Mosquitto {
            child: None,
            url: format!("{scheme}://127.0.0.1:{port}"),
            port,
            dir,
            client_args,
        };
        m.restart();
        m
    }

    /// A password file for `user` with `password` (`mosquitto_passwd`), for `password_file`.
    pub fn password_file(dir: &std::path::Path, user: &str, password: &str) -> PathBuf {
        let path = dir.join("mosquitto.passwd");
        let ok = Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(&path)
            .args([user, password])
            .status()
            .expect("run mosquitto_passwd")
            .success();
        assert!(ok, "mosquitto_passwd failed");
        path
    }

    /// Stop it with SIGTERM (it saves its persistent sessions) and wait.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and persistence file.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (scripts/setup --test installs it)");
        self.child = Some(child);
        wait_for_port(self.port, "mosquitto");
    }

    /// A handle that only publishes to the broker at `port` (for a publishing thread).
    pub fn publisher(port: u16) -> Publisher {
        Publisher {
            port,
            args: Vec::new(),
        }
    }

    /// A publisher with this broker's client arguments (TLS files, credentials).
    pub fn client(&self) -> Publisher {
        Publisher {
            port: self.port,
            args: self.client_args.clone(),
        }
    }

    /// Publish `lines`, one message each, on `topic` with QoS 1 (one `mosquitto_pub -l`).
    pub fn publish_lines(&self, topic: &str, lines: &[String]) {
        self.client().publish_lines(topic, lines);
    }

    /// Publish one message with QoS 1.
    pub fn publish(&self, topic: &str, body: &str) {
        self.client().publish(topic, body);
    }
}

/// Publishes to a broker with `mosquitto_pub`.
pub struct Publisher {
    port: u16,
    args: Vec<String>,
}

impl Publisher {
    /// Publish `lines`, one message each, on `topic` with QoS 1 (one `mosquitto_pub -l`).
    pub fn publish_lines(&self, topic: &str, lines: &[String]) {
        let mut child = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .args(["-q", "1", "-t", topic, "-l"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run mosquitto_pub (scripts/setup --test installs mosquitto-clients)");
        let mut stdin = child.stdin.take().unwrap();
        for l in lines {
            writeln!(stdin, "{l}").unwrap();
        }
        drop(stdin);
        assert!(child.wait().unwrap().success(), "mosquitto_pub failed");
    }

    /// Publish one message with QoS 1.
    pub fn publish(&self, topic: &str, body: &str) {
        let ok = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .args(["-q", "1", "-t", topic, "-m", body])
            .status()
            .expect("run mosquitto_pub")
            .success();
        assert!(ok, "mosquitto_pub failed");
    }
}

fn mosquitto_bin() -> PathBuf {
    ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("mosquitto"))
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

/// One message a [`NatsConn`] got.
#[derive(Debug, Clone)]
pub struct NatsMsg {
    /// Its subject.
    pub subject: String,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// A NATS client over the text protocol (CONNECT, PUB, SUB, PING).
pub struct NatsConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_sid: u32,
}

impl NatsConn {
    /// Connect to the server at `port`.
    pub fn connect(port: u16) -> NatsConn {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = NatsConn {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
            next_sid: 1,
        };
        let mut info = String::new();
        c.reader.read_line(&mut info).unwrap();
        assert!(info.starts_with("INFO"), "{info}");
        c.send(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n");
        c.flush();
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Publish `payload` on `subject`, with `reply` as the reply subject if given.
    pub fn publish(&mut self, subject: &str, reply: Option<&str>, payload: &[u8]) {
        let head = match reply {
            Some(r) => format!("PUB {subject} {r} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        };
        let mut buf = head.into_bytes();
        buf.extend_from_slice(payload);
        buf.extend_from_slice(b"\r\n");
        self.send(&buf);
    }

    /// Subscribe to `subject`.
    pub fn subscribe(&mut self, subject: &str) {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.send(format!("SUB {subject} {sid}\r\n").as_bytes());
        self.flush();
    }

    /// Wait until the server has processed everything sent so far (PING → PONG); messages
    /// arriving meanwhile are dropped, so subscribe and flush before they can come.
    pub fn flush(&mut self) {
        self.send(b"PING\r\n");
        loop {
            match self.read_one() {
                Read1::Pong => return,
                Read1::Msg(_) | Read1::Other => {}
            }
        }
    }

    /// The next message (panics after `limit` without one).
    pub fn next_msg(&mut self, limit: Duration) -> Option<NatsMsg> {
        self.writer.set_read_timeout(Some(limit)).unwrap();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.read_one() {
                Read1::Msg(m) => return Some(m),
                Read1::Pong | Read1::Other => {}
            }
        }
        None
    }

    /// A request: publish with a fresh inbox as reply subject and wait for the answer.
    pub fn request(&mut self, subject: &str, payload: &[u8], limit: Duration) -> Option<NatsMsg> {
        let inbox = format!("_INBOX.test.{}", self.next_sid);
        self.subscribe(&inbox);
        self.publish(subject, Some(&inbox), payload);
        self.next_msg(limit)
    }

    /// Send a JetStream API request and return its JSON answer.
    pub fn js_api(&mut self, api: &str, body: &serde_json::Value) -> serde_json::Value {
        let m = self
            .request(
                &format!("$JS.API.{api}"),
                body.to_string().as_bytes(),
                Duration::from_secs(10),
            )
            .expect("JetStream API answered");
        serde_json::from_slice(&m.payload).unwrap()
    }

    fn read_one(&mut self) -> Read1 {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => panic!("NATS connection closed"),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Read1::Other
            }
            Err(e) => panic!("NATS read: {e}"),
        }
        let line = line.trim_end();
        if line == "PING" {
            self.send(b"PONG\r\n");
            return Read1::Other;
        }
        if line == "PONG" {
            return Read1::Pong;
        }
        let Some(rest) = line.strip_prefix("MSG ") else {
            return Read1::Other;
        };
        let parts: Vec<&str> = rest.split(' ').collect();
        let len: usize = parts[parts.len() - 1].parse().unwrap();
        let mut payload = vec![0; len + 2];
        self.reader.read_exact(&mut payload).unwrap();
        payload.truncate(len);
        Read1::Msg(NatsMsg {
            subject: parts[0].to_string(),
            payload,
        })
    }
}

enum Read1 {
    Msg(NatsMsg),
    Pong,
    Other,
}
