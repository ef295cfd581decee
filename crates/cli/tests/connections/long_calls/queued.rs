//! Async calls that run longer than the queue's redelivery window (NATS's ack wait of 10 s;
//! the embedded queue has none) on both backends: one that keeps running is delivered once,
//! through a gateway whose `--upstream-timeout` is shorter still; one cut by a kill -9 of the
//! platform is delivered again after the restart.

use std::time::Duration;

use serde_json::json;
use virga_testkit::brokers::NatsServer;

use super::support::{recorded, Fixture};

/// A platform on `backend` (`embedded` or `nats`) with `extra` arguments, and its server.
fn start(backend: &str, extra: &[&str]) -> (Fixture, Option<NatsServer>) {
    let nats = (backend == "nats").then(NatsServer::start);
    let mut args: Vec<&str> = extra.to_vec();
    if let Some(n) = &nats {
        args.extend(["--queue", n.url.as_str()]);
    }
    (Fixture::start(&args), nats)
}

/// Queue `/sleep?s=SECS` of `name` with call id `id`; asserts 202.
fn queue_sleep(f: &Fixture, name: &str, id: &str, secs: u32) {
    let r =
        f.p.anon(
            reqwest::Method::POST,
            &format!("/async-function/{name}/sleep?s={secs}"),
        )
        .header("X-Call-Id", id)
        .send()
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().unwrap());
}

fn count(lines: &[String], what: &str) -> usize {
    lines.iter().filter(|l| *l == what).count()
}

fn outlives_the_redelivery_window_and_runs_once(backend: &str) {
    let (f, _nats) = start(backend, &["--upstream-timeout", "2s"]);
    let calls = f.deploy_http("hours", json!({"exec_timeout": "2h"}), json!({}));
    queue_sleep(&f, "hours", "long-1", 14);
    let done = f.p.eventually(Duration::from_secs(40), || {
        recorded(&calls).contains(&"done long-1".to_string())
    });
    assert!(done, "{:?}", recorded(&calls));
    // A redelivery would have started while the first ran (NATS: after 10 s without an ack).
    std::thread::sleep(Duration::from_secs(2));
    let lines = recorded(&calls);
    assert_eq!(count(&lines, "start long-1"), 1, "{lines:?}");
    assert_eq!(count(&lines, "done long-1"), 1, "{lines:?}");
    let settled = f.p.eventually(Duration::from_secs(10), || {
        let q = f.p.get_json("/system/virga/queues");
        q["completed"] == 1 && q["queues"][0]["depth"] == 0 && q["queues"][0]["inflight"] == 0
    });
    assert!(settled, "{}", f.p.get_json("/system/virga/queues"));
    assert_eq!(f.p.get_json("/system/virga/dead-letters"), json!([]));
}

fn cut_by_a_crash_is_delivered_again(backend: &str) {
    let (mut f, _nats) = start(backend, &[]);
    let calls = f.deploy_http("crashed", json!({"exec_timeout": "1h"}), json!({}));
    queue_sleep(&f, "crashed", "cut-1", 6);
    let running = f.p.eventually(Duration::from_secs(20), || {
        recorded(&calls).contains(&"start cut-1".to_string())
    });
    assert!(running, "{:?}", recorded(&calls));
    f.p.kill9();
    f.p.restart();
    let done = f.p.eventually(Duration::from_secs(45), || {
        recorded(&calls).contains(&"done cut-1".to_string())
    });
    let lines = recorded(&calls);
    assert!(done, "{lines:?}");
    assert_eq!(count(&lines, "start cut-1"), 2, "{lines:?}");
    assert_eq!(count(&lines, "done cut-1"), 1, "{lines:?}");
}

mod an_async_call_outliving_the_redelivery_window_runs_once {
    #[test]
    fn embedded() {
        super::outlives_the_redelivery_window_and_runs_once("embedded");
    }
    #[test]
    fn nats() {
        super::outlives_the_redelivery_window_and_runs_once("nats");
    }
}

mod a_long_async_call_cut_by_a_crash_is_delivered_again {
    #[test]
    fn embedded() {
        super::cut_by_a_crash_is_delivered_again("embedded");
    }
    #[test]
    fn nats() {
        super::cut_by_a_crash_is_delivered_again("nats");
    }
}
