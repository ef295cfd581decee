//! Tests of the embedded queue: durability across reopen, delayed retries under an injected
//! clock, results kept for their callback, limits, dead letters, and group commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::codec::{sample_call, sample_result};
use crate::{Clock, Ending, Queue};

struct FakeClock(AtomicU64);

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn open(dir: &std::path::Path, clock: Arc<FakeClock>) -> Queue {
    open_with(dir, clock, Limits::default())
}

fn open_with(dir: &std::path::Path, clock: Arc<FakeClock>, limits: Limits) -> Queue {
    let mut cfg = EmbeddedConfig::new(dir.to_path_buf());
    cfg.limits = limits;
    cfg.timing = Timing {
        clock,
        jitter: Arc::new(|| 0.0),
    };
    Queue::Embedded(Box::new(Embedded::open(cfg).unwrap()))
}

fn clock() -> Arc<FakeClock> {
    Arc::new(FakeClock(AtomicU64::new(1_000_000)))
}

async fn receive(q: &Queue, name: &str) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), q.receive(name))
        .await
        .expect("a call is due")
        .unwrap()
}

#[tokio::test]
async fn pending_calls_survive_reopen_and_acked_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = open(dir.path(), clock());
        for i in 0..3 {
            q.enqueue(sample_call(&format!("c{i}"))).await.unwrap();
        }
        let d = receive(&q, "default").await;
        assert_eq!((d.call.id.as_str(), d.attempt), ("c0", 3));
        q.ack(d).await.unwrap();
        // Taken but never acked: delivered again after the restart.
        let d = receive(&q, "default").await;
        assert_eq!(d.call.id, "c1");
        // A durable write after the ack flushes it.
        q.enqueue(sample_call("c3")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q = open(dir.path(), clock());
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(receive(&q, "default").await.call.id);
    }
    assert_eq!(ids, ["c1", "c2", "c3"]);
    assert_eq!(q.stats().await.unwrap()[0].inflight, 3);
}

#[tokio::test]
async fn a_retry_waits_for_its_time_by_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let clk = clock();
    let q = open(dir.path(), clk.clone());
    let mut c = sample_call("r");
    c.attempts = 0;
    q.enqueue(c).await.unwrap();
    let d = receive(&q, "default").await;
    assert_eq!(d.attempt, 1);
    q.retry(d, Duration::from_secs(30)).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(400), q.receive("default")).await;
    assert!(early.is_err(), "delivered before its backoff");
    assert_eq!(q.stats().await.unwrap()[0].depth, 1);
    clk.0.fetch_add(30_000, Ordering::SeqCst);
    let d = receive(&q, "default").await;
    assert_eq!((d.call.id.as_str(), d.attempt), ("r", 2));
    // The rescheduled copy is the durable one.
    drop(d);
    drop(q);
    let q = open(dir.path(), clk.clone());
    let d = receive(&q, "default").await;
    assert_eq!(d.attempt, 2);
}

#[tokio::test]
async fn dead_letters_are_listed_retried_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path(), clock());
    q.enqueue(sample_call("d1")).await.unwrap();
    q.enqueue(sample_call("d2")).await.unwrap();
    for _ in 0..2 {
        let d = receive(&q, "default").await;
        q.dead_letter(d, 503, "503 after 3 attempts".into(), 5)
            .await
            .unwrap();
    }
    let dead = q.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!((dead[0].status, dead[0].attempts), (503, 3));
    assert_eq!(dead[0].kind, "call");
    let stats = q.stats().await.unwrap();
    assert_eq!(
        (stats[0].depth, stats[0].inflight, stats[0].dead),
        (0, 0, 2)
    );
    assert!(q.retry_dead_letter("d1", 9, 10).await.unwrap());
    assert!(!q.retry_dead_letter("nope", 9, 10).await.unwrap());
    let d = receive(&q, "default").await;
    assert_eq!((d.call.id.as_str(), d.attempt), ("d1", 1));
    drop(q);
    let q = open(dir.path(), clock());
    assert_eq!(q.dead_letters().await.unwrap().len(), 1);
    assert_eq!(q.purge_dead_letters().await.unwrap(), 1);
    assert!(q.dead_letters().await.unwrap().is_empty());
}

#[tokio::test]
async fn named_queues_are_separate() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path(), clock());
    let mut slow = sample_call("s");
    slow.queue = "slow".into();
    q.enqueue(slow).await.unwrap();
    q.enqueue(sample_call("f")).await.unwrap();
    assert_eq!(receive(&q, "default").await.call.id, "f");
    assert_eq!(receive(&q, "slow").await.call.id, "s");
    let mut names = q.known_queues().await;
    names.sort();
    assert_eq!(names, ["default", "slow"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accepts_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let q = Arc::new(open(dir.path(), clock()));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            q.enqueue(sample_call(&format!("g{i}"))).await.unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let Queue::Embedded(e) = &*q else { panic!() };
    assert!(e.syncs() < 200, "{} syncs for 200 accepts", e.syncs());
    assert_eq!(q.stats().await.unwrap()[0].depth, 200);
}

async fn receive_result(q: &Queue) -> ResultDelivery {
    tokio::time::timeout(Duration::from_secs(5), q.receive_result())
        .await
        .expect("a result is due")
        .unwrap()
}

#[tokio::test]
async fn a_result_replaces_its_call_and_survives_reopen_until_acked() {
    let dir = tempfile::tempdir().unwrap();
    let clk = clock();
    {
        let q = open(dir.path(), clk.clone());
        q.enqueue(sample_call("c")).await.unwrap();
        let d = receive(&q, "default").await;
        let ending = Ending {
            dead: None,
            result: Some(sample_result("c")),
            now_ms: 1,
        };
        q.finish(d, ending).await.unwrap();
        assert_eq!(q.stats().await.unwrap()[0].depth, 0);
        let r = receive_result(&q).await;
        assert_eq!((r.result.id.as_str(), r.attempt), ("c", 4));
        // The callback failed: due again in 10 s, as attempt 5.
        q.retry_result(r, Duration::from_secs(10)).await.unwrap();
        let early = tokio::time::timeout(Duration::from_millis(300), q.receive_result()).await;
        assert!(early.is_err(), "a callback was sent before its backoff");
    }
    // Neither the call nor the result is lost or duplicated by a restart.
    let q = open(dir.path(), clk.clone());
    let early = tokio::time::timeout(Duration::from_millis(300), q.receive("default")).await;
    assert!(
        early.is_err(),
        "the call came back after its result was stored"
    );
    clk.0.fetch_add(10_000, Ordering::SeqCst);
    let r = receive_result(&q).await;
    assert_eq!((r.result.body.as_ref(), r.attempt), (&b"answer\0"[..], 5));
    assert_eq!(q.callback_stats().await.unwrap().inflight, 1);
    q.dead_letter_result(r, "callback failed".into(), 2)
        .await
        .unwrap();
    let dead = q.dead_letters().await.unwrap();
    assert_eq!((dead[0].kind.as_str(), dead[0].attempts), ("callback", 5));
    // A retried callback dead letter goes back to the callbacks, attempts reset.
    assert!(q.retry_dead_letter("c", 3, 99).await.unwrap());
    let r = receive_result(&q).await;
    assert_eq!((r.attempt, r.result.give_up_ms), (1, 99));
    q.ack_result(r).await.unwrap();
    q.enqueue(sample_call("flush")).await.unwrap();
    drop(q);
    let q = open(dir.path(), clk);
    let early = tokio::time::timeout(Duration::from_millis(300), q.receive_result()).await;
    assert!(early.is_err(), "an acked result came back");
}

#[tokio::test]
async fn limits_refuse_new_calls_but_not_results_and_free_up_on_ack() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_depth: 3,
        max_depth_per_function: 2,
        ..Limits::default()
    };
    let q = open_with(dir.path(), clock(), limits.clone());
    q.enqueue(sample_call("a1")).await.unwrap();
    q.enqueue(sample_call("a2")).await.unwrap();
    let e = q.enqueue(sample_call("a3")).await.unwrap_err();
    assert!(matches!(e, QueueError::Full(_)), "{e}");
    let mut other = sample_call("b1");
    other.function = "other".into();
    q.enqueue(other.clone()).await.unwrap();
    let e = q.enqueue(other.clone()).await.unwrap_err();
    assert!(e.to_string().contains("queue already holds 3"), "{e}");
    // A call turning into its result keeps its place; an ack frees it.
    let d = receive(&q, "default").await;
    let ending = Ending {
        dead: None,
        result: Some(sample_result("a1")),
        now_ms: 1,
    };
    q.finish(d, ending).await.unwrap();
    assert!(q.enqueue(sample_call("a3")).await.is_err());
    let r = receive_result(&q).await;
    q.ack_result(r).await.unwrap();
    q.enqueue(sample_call("a3")).await.unwrap();
    // Usage is rebuilt from the log at start.
    q.enqueue(sample_call("flush")).await.unwrap_err();
    drop(q);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q = open_with(dir.path(), clock(), limits);
    assert!(matches!(
        q.enqueue(sample_call("a4")).await,
        Err(QueueError::Full(_))
    ));
}

#[tokio::test]
async fn a_record_that_cannot_be_read_for_now_is_tried_again_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let clk = clock();
    let q = open(dir.path(), clk.clone());
    q.enqueue(sample_call("later")).await.unwrap();
    let seg = dir.path().join("seg-000000000001.log");
    let away = dir.path().join("away");
    std::fs::rename(&seg, &away).unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), q.receive("default")).await;
    assert!(early.is_err(), "delivered without its record");
    std::fs::rename(&away, &seg).unwrap();
    clk.0.fetch_add(1000, Ordering::SeqCst);
    assert_eq!(receive(&q, "default").await.call.id, "later");
}
