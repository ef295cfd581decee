//! The NATS backend against a real `nats-server -js`: calls left by the first subject layout
//! are moved to the current one at connect.

use std::process::{Child, Command, Stdio};

use async_nats::jetstream::{self, consumer, stream};

use super::*;
use crate::codec::sample_call;

/// A nats-server with JetStream on a free port, killed on drop.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server (scripts/setup --test installs it)");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Server {
        child,
        url: format!("nats://127.0.0.1:{port}"),
        _dir: dir,
    }
}

#[tokio::test]
async fn calls_of_the_first_layout_are_moved_to_the_current_one() {
    let srv = server();
    // What the first version left: subjects virga.calls.QUEUE, a consumer q-QUEUE.
    let js = jetstream::new(async_nats::connect(&srv.url).await.unwrap());
    let old = js
        .create_stream(stream::Config {
            name: CALLS.into(),
            subjects: vec!["virga.calls.*".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    old.create_consumer(consumer::pull::Config {
        durable_name: Some("q-default".into()),
        filter_subject: "virga.calls.default".into(),
        ack_policy: consumer::AckPolicy::Explicit,
        ..Default::default()
    })
    .await
    .unwrap();
    for id in ["old-1", "old-2"] {
        js.publish("virga.calls.default", encode_call(&sample_call(id)).into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let q = Nats::connect(NatsConfig::new(&srv.url)).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), q.receive("default"))
            .await
            .expect("a moved call is delivered")
            .unwrap();
        ids.push(d.call.id.clone());
        let Token::Nats(m) = d.token else {
            panic!("not a NATS delivery")
        };
        q.ack(&m).await.unwrap();
    }
    ids.sort();
    assert_eq!(ids, ["old-1", "old-2"]);
    assert_eq!(q.known_queues().await, ["default"]);
    let mut names = q.calls.consumer_names();
    while let Some(n) = names.next().await {
        assert_ne!(n.unwrap(), "q-default", "the old consumer is still there");
    }
}
