//! The brokers over TLS and with passwords: a real mosquitto (`cafile`/`certfile`/`keyfile`,
//! `require_certificate` for mutual TLS, a `password_file`) and a real nats-server (a `tls {}`
//! block, `authorization {}`), with certificates from a CA the test makes (rcgen). Messages
//! published with `mosquitto_pub --cafile` or a TLS NATS client arrive as invocations, exactly
//! once each; a broker whose certificate the CA does not sign is never used (a log line naming
//! the host and the CA file, the metric 0, HTTP serving); a wrong password is refused with a
//! line saying what to check.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use virga_testkit::brokers::{Mosquitto, NatsServer};
use virga_testkit::certs::{CertFiles, TestCa};

use crate::support::{metric, real, records, wait_real, wait_subscribed, Setup};

const MQTT_UP: &str = "virga_connector_connected{connector=\"mqtt\"}";
const NATS_UP: &str = "virga_connector_connected{connector=\"nats\"}";

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A mosquitto serving only TLS with `server`'s certificate, trusting `ca` for clients.
fn tls_mosquitto(ca: &TestCa, server: &CertFiles, extra: &str, client: &[String]) -> Mosquitto {
    let conf = format!(
        "allow_anonymous true\ncafile {}\ncertfile {}\nkeyfile {}\n{extra}",
        path(&ca.ca),
        path(&server.cert),
        path(&server.key)
    );
    let mut args = vec!["--cafile".to_string(), path(&ca.ca)];
    args.extend_from_slice(client);
    Mosquitto::start_with(&conf, "mqtts", args)
}

/// Publish `n` numbered messages on `topic` and check each arrives once, as a `mqtt` call.
fn mqtt_exactly_once(s: &Setup, broker: &Mosquitto, topic: &str, n: usize) {
    let calls = s.deploy_recorder("secure", json!({"topic": topic}));
    wait_subscribed(&calls, |b| broker.publish(topic, b));
    let lines: Vec<String> = (0..n).map(|i| format!("s{i:02}")).collect();
    broker.publish_lines(topic, &lines);
    let mut bodies: Vec<String> = wait_real(&calls, n, Duration::from_secs(20))
        .into_iter()
        .map(|r| {
            assert_eq!((r.connector.as_str(), r.topic.as_str()), ("mqtt", topic));
            r.body
        })
        .collect();
    // Nothing more comes: each message is one call.
    std::thread::sleep(Duration::from_millis(300));
    bodies.extend(real(&records(&calls)).into_iter().skip(n).map(|r| r.body));
    bodies.sort();
    assert_eq!(bodies, lines);
    assert_eq!(metric(&s.p, MQTT_UP), Some(1.0));
}

#[test]
fn mqtts_messages_invoke_once_each() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "mqtt");
    let broker = tls_mosquitto(&ca, &ca.server(), "", &[]);
    assert!(broker.url.starts_with("mqtts://"));
    let s = Setup::start(&["--mqtt-url", &broker.url, "--mqtt-ca", &path(&ca.ca)]);
    mqtt_exactly_once(&s, &broker, "secure/in", 20);
}

#[test]
fn mqtt5_with_mutual_tls_invokes_once_each() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "mtls");
    let (virga, publisher) = (ca.client("virga"), ca.client("publisher"));
    let client = vec![
        "--cert".to_string(),
        path(&publisher.cert),
        "--key".to_string(),
        path(&publisher.key),
    ];
    let broker = tls_mosquitto(&ca, &ca.server(), "require_certificate true\n", &client);
    let s = Setup::start(&[
        "--mqtt-url",
        &broker.url,
        "--mqtt-version",
        "5",
        "--mqtt-ca",
        &path(&ca.ca),
        "--mqtt-cert",
        &path(&virga.cert),
        "--mqtt-key",
        &path(&virga.key),
    ]);
    mqtt_exactly_once(&s, &broker, "mtls/in", 20);
}

/// The connector's metric stays 0, HTTP serves, and a message is never delivered.
fn never_connects(s: &Setup, series: &str, publish: impl Fn(&str)) -> std::path::PathBuf {
    let calls = s.deploy_recorder("shut", json!({"topic": "shut"}));
    assert!(s
        .p
        .eventually(Duration::from_secs(10), || metric(&s.p, series)
            == Some(0.0)));
    publish("never");
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(metric(&s.p, series), Some(0.0));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(records(&calls).is_empty(), "{:?}", records(&calls));
    let health = s.p.anon(reqwest::Method::GET, "/healthz").send().unwrap();
    assert_eq!(health.status(), 200);
    calls
}

/// `line` is in the log at least twice: the connector retries (with backoff).
fn logged_twice(s: &Setup, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.stderr().matches(line).count() < 2 {
        assert!(
            Instant::now() < deadline,
            "not twice {line:?}:\n{}",
            s.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = s.stderr();
    eprintln!(
        "{}",
        log.lines().find(|l| l.contains(line)).unwrap_or_default()
    );
}

#[test]
fn an_mqtt_broker_the_ca_does_not_sign_is_never_used() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, other) = (
        TestCa::new(tmp.path(), "real"),
        TestCa::new(tmp.path(), "other"),
    );
    let broker = tls_mosquitto(&ca, &ca.server(), "", &[]);
    let s = Setup::start(&["--mqtt-url", &broker.url, "--mqtt-ca", &path(&other.ca)]);
    never_connects(&s, MQTT_UP, |b| broker.publish("shut", b));
    logged_twice(
        &s,
        &format!(
            "mqtt connector: the TLS certificate of 127.0.0.1 is not signed by the CA in {}",
            path(&other.ca)
        ),
    );
    assert!(s.stderr().contains("give --mqtt-ca the CA that signed"));
}

#[test]
fn a_wrong_mqtt_password_is_refused_with_a_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let passwd = Mosquitto::password_file(tmp.path(), "virga", "right");
    let conf = format!("allow_anonymous false\npassword_file {}\n", path(&passwd));
    let creds = ["-u", "virga", "-P", "right"].map(String::from).to_vec();
    let broker = Mosquitto::start_with(&conf, "mqtt", creds);
    let wrong = tmp.path().join("wrong");
    std::fs::write(&wrong, "wrong\n").unwrap();
    let s = Setup::start(&[
        "--mqtt-url",
        &broker.url,
        "--mqtt-user",
        "virga",
        "--mqtt-password-file",
        &path(&wrong),
    ]);
    never_connects(&s, MQTT_UP, |b| broker.publish("shut", b));
    logged_twice(
        &s,
        &format!("mqtt connector: {} refused the credentials", broker.url),
    );
    assert!(s.stderr().contains("check --mqtt-user and the password"));
}

/// A nats-server serving only TLS with `ca`'s server certificate and one user.
fn tls_nats(ca: &TestCa) -> NatsServer {
    let server = ca.server();
    NatsServer::start_with(&format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n\
         authorization {{\n  user: virga\n  password: right\n}}\n",
        path(&server.cert),
        path(&server.key)
    ))
}

/// Start `virga up` on `nats` with the password `password` and the CA file `ca`.
fn nats_setup(tmp: &Path, nats: &NatsServer, password: &str, ca: &Path) -> Setup {
    let file = tmp.join("nats-password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    let url = format!("tls://127.0.0.1:{}", nats.port);
    Setup::start(&[
        "--nats-url",
        &url,
        "--nats-ca",
        &path(ca),
        "--nats-user",
        "virga",
        "--nats-password-file",
        &path(&file),
    ])
}

/// Publish `bodies` on `subject` over TLS as `virga`/`right`, trusting `ca`, with a real NATS
/// client; each publish is flushed, so it reached the server.
fn nats_publish(port: u16, ca: &Path, subject: &str, bodies: &[String]) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .add_root_certificates(ca.to_path_buf())
            .require_tls(true)
            .user_and_password("virga".into(), "right".into())
            .connect(format!("tls://127.0.0.1:{port}"))
            .await
            .expect("a TLS NATS client connects");
        for b in bodies {
            client
                .publish(subject.to_string(), b.clone().into())
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
    });
}

#[test]
fn nats_over_tls_with_a_password_invokes_once_each() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "nats");
    let nats = tls_nats(&ca);
    let s = nats_setup(tmp.path(), &nats, "right", &ca.ca);
    let calls = s.deploy_recorder("secure", json!({"topic": "secure.in"}));
    wait_subscribed(&calls, |b| {
        nats_publish(nats.port, &ca.ca, "secure.in", &[b.to_string()])
    });
    let bodies: Vec<String> = (0..20).map(|i| format!("n{i:02}")).collect();
    nats_publish(nats.port, &ca.ca, "secure.in", &bodies);
    let recs = wait_real(&calls, 20, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let mut got: Vec<String> = real(&records(&calls)).into_iter().map(|r| r.body).collect();
    got.sort();
    assert_eq!(got, bodies);
    assert!(recs.iter().all(|r| r.connector == "nats"), "{recs:?}");
    assert_eq!(metric(&s.p, NATS_UP), Some(1.0));
}

#[test]
fn a_nats_server_the_ca_does_not_sign_is_never_used() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, other) = (
        TestCa::new(tmp.path(), "real"),
        TestCa::new(tmp.path(), "other"),
    );
    let nats = tls_nats(&ca);
    let s = nats_setup(tmp.path(), &nats, "right", &other.ca);
    never_connects(&s, NATS_UP, |b| {
        nats_publish(nats.port, &ca.ca, "shut", &[b.to_string()])
    });
    logged_twice(
        &s,
        &format!(
            "nats connector: the TLS certificate of 127.0.0.1 is not signed by the CA in {}",
            path(&other.ca)
        ),
    );
    assert!(s.stderr().contains("give --nats-ca the CA that signed"));
}

#[test]
fn a_wrong_nats_password_is_refused_with_a_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path(), "nats");
    let nats = tls_nats(&ca);
    let s = nats_setup(tmp.path(), &nats, "wrong", &ca.ca);
    never_connects(&s, NATS_UP, |b| {
        nats_publish(nats.port, &ca.ca, "shut", &[b.to_string()])
    });
    logged_twice(
        &s,
        &format!(
            "nats connector: tls://127.0.0.1:{} refused the credentials (authorization violation)",
            nats.port
        ),
    );
    assert!(s.stderr().contains("check --nats-user and the password"));
}
