//! Callbacks are durable: a call's result is kept in the queue until its callback got it, so
//! neither kill -9 of `virga up` nor a receiver that is down for a while loses one, and a
//! callback that cannot be delivered within `--callback-retry-for` becomes a dead letter with
//! the result, which can be sent again from there.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{lines, Backend, Receiver, Setup};

/// Kills of `virga up` in the kill loop, and calls accepted between two kills.
const KILLS: usize = 10;
const PER_ROUND: usize = 110;

/// Send async calls with a callback to `cb_url` from a few threads until `done`, always to
/// the platform's current address; returns the ids that got 202 and any other status seen.
fn send_until(
    url: Arc<Mutex<String>>,
    cb_url: String,
    done: Arc<AtomicBool>,
    accepted: Arc<Mutex<HashSet<String>>>,
) -> Vec<std::thread::JoinHandle<Vec<u16>>> {
    (0..4)
        .map(|t| {
            let (url, cb_url, done, accepted) =
                (url.clone(), cb_url.clone(), done.clone(), accepted.clone());
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut odd = Vec::new();
                let mut i = 0;
                while !done.load(Ordering::SeqCst) {
                    let id = format!("kill-{t}-{i}");
                    let base = url.lock().unwrap().clone();
                    let r = http
                        .post(format!("{base}/async-function/echo"))
                        .header("X-Call-Id", &id)
                        .header("X-Callback-Url", &cb_url)
                        .body("x")
                        .send();
                    match r {
                        Ok(r) if r.status() == 202 => {
                            accepted.lock().unwrap().insert(id);
                            i += 1;
                        }
                        Ok(r) => odd.push(r.status().as_u16()),
                        // Killed or not listening yet: try again shortly.
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                odd
            })
        })
        .collect()
}

pub fn callbacks_survive_a_kill9_loop(b: Backend) {
    let started = Instant::now();
    let mut s = Setup::start(b);
    s.p.deploy_process("echo", "cat", json!({}));
    let cb = Receiver::start();
    let url = Arc::new(Mutex::new(s.p.url.clone()));
    let done = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let senders = send_until(url.clone(), cb.url.clone(), done.clone(), accepted.clone());
    for round in 1..=KILLS {
        let target = round * PER_ROUND;
        assert!(
            s.p.eventually(Duration::from_secs(30), || accepted.lock().unwrap().len()
                >= target),
            "no calls accepted after restart {round}"
        );
        s.p.kill9();
        s.p.restart();
        *url.lock().unwrap() = s.p.url.clone();
    }
    done.store(true, Ordering::SeqCst);
    let odd: Vec<u16> = senders
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(odd.is_empty(), "answers other than 202: {odd:?}");
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() >= KILLS * PER_ROUND);
    let all = s.p.eventually(Duration::from_secs(60), || {
        let (ids, _) = cb.call_ids();
        accepted.iter().all(|id| ids.contains(id))
    });
    let (ids, requests) = cb.call_ids();
    let lost = accepted.iter().filter(|id| !ids.contains(*id)).count();
    println!(
        "kill -9 loop ({b:?}): {KILLS} kills, {} calls accepted, {} callbacks received for them \
         ({requests} requests: {} duplicates), {lost} lost, {:.1}s",
        accepted.len(),
        accepted.len() - lost,
        requests - ids.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        all && lost == 0,
        "{lost} accepted calls never got their callback"
    );
}

pub fn callbacks_outlast_a_receiver_outage(b: Backend) {
    const N: usize = 50;
    let s = Setup::start(b);
    s.p.deploy_process("echo", "cat", json!({}));
    let mut cb = Receiver::start();
    cb.stop();
    let down = Instant::now();
    let mut sent = HashSet::new();
    for i in 0..N {
        let id = format!("out-{i}");
        let r = s.call_async(
            "echo",
            &format!("body-{i}"),
            &[("X-Callback-Url", &cb.url), ("X-Call-Id", &id)],
        );
        assert_eq!(r.status(), 202);
        sent.insert(id);
    }
    assert!(
        s.p.eventually(Duration::from_secs(30), || {
            let q = s.queues();
            q["completed"].as_u64() >= Some(N as u64) && q["callbacksRetried"].as_u64() > Some(0)
        }),
        "{}",
        s.queues()
    );
    // Down for longer than the callback retries used to last (5 attempts, about 4 s).
    std::thread::sleep(Duration::from_secs(6).saturating_sub(down.elapsed()));
    assert!(cb.requests().is_empty());
    let q = s.queues();
    let waiting = q["callbacks"]["depth"].as_u64().unwrap();
    let sending = q["callbacks"]["inflight"].as_u64().unwrap();
    println!("receiver outage ({b:?}): callbacks waiting {waiting}, being sent {sending}");
    if b == Backend::Embedded {
        assert_eq!(waiting + sending, N as u64, "{q}");
    }
    cb.resume();
    let back = Instant::now();
    let all = s.p.eventually(Duration::from_secs(40), || {
        let (ids, _) = cb.call_ids();
        sent.iter().all(|id| ids.contains(id))
    });
    let (ids, requests) = cb.call_ids();
    println!(
        "receiver outage ({b:?}): down {:.1}s, {} of {N} callbacks arrived within {:.1}s of it \
         coming back ({requests} requests)",
        (back - down).as_secs_f64(),
        sent.iter().filter(|id| ids.contains(*id)).count(),
        back.elapsed().as_secs_f64()
    );
    assert!(all, "callbacks were lost");
    for r in cb.requests() {
        let i = r.headers["x-call-id"]
            .strip_prefix("out-")
            .unwrap()
            .to_string();
        assert_eq!(r.body, format!("body-{i}"));
        assert_eq!(r.headers["x-function-status"], "200");
    }
    let q = s.queues();
    assert_eq!(q["callbacksFailed"], 0, "{q}");
    assert!(s.dead_letters().is_empty());
}

/// Every file under `dir` is 0600 and every directory 0700 (the log and the dead letters);
/// returns how many files there are.
fn assert_private(dir: &std::path::Path) -> usize {
    use std::os::unix::fs::PermissionsExt;
    let mut files = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let mode = e.metadata().unwrap().permissions().mode() & 0o777;
        if e.file_type().unwrap().is_dir() {
            assert_eq!(mode, 0o700, "{}", e.path().display());
            files += assert_private(&e.path());
        } else {
            assert_eq!(mode, 0o600, "{}", e.path().display());
            files += 1;
        }
    }
    files
}

pub fn an_undeliverable_callback_is_a_dead_letter_with_its_result(b: Backend) {
    let s = Setup::start_with(b, &["--callback-retry-for", "2s"]);
    let calls = s.deploy_flaky("echo", 0, 503, json!({}));
    let mut cb = Receiver::start();
    cb.stop();
    let r = s.call_async(
        "echo",
        "payload",
        &[("X-Callback-Url", &cb.url), ("X-Call-Id", "cb-dl")],
    );
    assert_eq!(r.status(), 202);
    assert!(
        s.p.eventually(Duration::from_secs(30), || !s.dead_letters().is_empty()),
        "the callback was not dead-lettered: {}",
        s.queues()
    );
    let dead = s.dead_letters();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(
        (d["id"].as_str(), d["kind"].as_str()),
        (Some("cb-dl"), Some("callback"))
    );
    assert_eq!(d["status"], 200, "the function's status is kept");
    assert_eq!(d["bodyBytes"], "echo:payload".len());
    assert!(d["attempts"].as_u64().unwrap() > 1, "{d}");
    let reason = d["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("callback to {}", cb.url)),
        "{reason}"
    );
    let out = s.virga(&["dead-letters", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("cb-dl") && table.contains("callback"),
        "{table}"
    );
    assert_eq!(s.queues()["callbacksFailed"], 1);
    if b == Backend::Embedded {
        // At least a log segment and the dead letter.
        assert!(assert_private(&s.p.data_dir.join("queue")) >= 2);
    }
    // Sent again from the dead letter: the stored result, without running the call again.
    cb.resume();
    let out = s.virga(&["dead-letters", "retry", "cb-dl"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = cb.wait_for(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "no callback after the retry");
    assert_eq!(got[0].body, "echo:payload");
    assert_eq!(got[0].headers["x-call-id"], "cb-dl");
    assert_eq!(got[0].headers["x-function-status"], "200");
    assert_eq!(got[0].headers["content-type"], "text/x-flaky");
    assert_eq!(lines(&calls).len(), 1, "the function ran again");
    assert!(s
        .p
        .eventually(Duration::from_secs(5), || s.dead_letters().is_empty()));
}
