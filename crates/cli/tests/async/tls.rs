//! HTTPS callbacks: a real TLS receiver with a certificate from a test CA (rcgen, rustls).
//! `virga up` trusts that CA through `SSL_CERT_FILE`, which the system-roots loader honours,
//! so the callback is verified like any other; a receiver whose CA is not trusted is refused.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

use crate::support::{serve_one, Backend, Received, Setup, ALLOW_RECEIVERS, OK};

/// An HTTPS callback receiver on 127.0.0.1 with its own CA, whose certificate is in `ca_pem`.
pub struct TlsReceiver {
    pub url: String,
    pub ca_pem: PathBuf,
    pub got: Arc<Mutex<Vec<Received>>>,
}

impl TlsReceiver {
    pub fn start(dir: &Path, name: &str) -> TlsReceiver {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, format!("virga test CA {name}"));
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let ca_pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}/cb", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (config, g) = (config.clone(), g.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    serve_one(rustls::StreamOwned::new(conn, stream), &g, OK);
                });
            }
        });
        TlsReceiver { url, ca_pem, got }
    }
}

pub fn https_callbacks_are_verified_with_the_system_roots() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = TlsReceiver::start(dir.path(), "trusted");
    let stranger = TlsReceiver::start(dir.path(), "stranger");
    let mut args = ALLOW_RECEIVERS.to_vec();
    args.extend(["--callback-retry-for", "2s"]);
    let ca = trusted.ca_pem.to_str().unwrap();
    let s = Setup::start_bare(Backend::Embedded, &args, &[("SSL_CERT_FILE", ca)]);
    s.deploy_flaky("echo", 0, 503, json!({}));
    let r = s.call_async(
        "echo",
        "over tls",
        &[("X-Callback-Url", &trusted.url), ("X-Call-Id", "tls-1")],
    );
    assert_eq!(r.status(), 202);
    assert!(
        s.p.eventually(Duration::from_secs(30), || !trusted
            .got
            .lock()
            .unwrap()
            .is_empty()),
        "no HTTPS callback: {} {:?}",
        s.queues(),
        s.dead_letters()
    );
    let got = trusted.got.lock().unwrap()[0].clone();
    assert_eq!(got.body, "echo:over tls");
    assert_eq!(got.headers["x-call-id"], "tls-1");
    assert_eq!(got.headers["x-function-status"], "200");
    // A certificate from a CA the system does not trust: never delivered, dead-lettered.
    let r = s.call_async(
        "echo",
        "",
        &[("X-Callback-Url", &stranger.url), ("X-Call-Id", "tls-2")],
    );
    assert_eq!(r.status(), 202);
    assert!(s
        .p
        .eventually(Duration::from_secs(30), || !s.dead_letters().is_empty()));
    let d = &s.dead_letters()[0];
    assert_eq!(d["id"], "tls-2");
    let reason = d["reason"].as_str().unwrap();
    assert!(reason.contains("certificate"), "{reason}");
    assert!(stranger.got.lock().unwrap().is_empty());
}
