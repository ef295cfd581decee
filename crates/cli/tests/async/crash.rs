//! The crash test: 2,000 async calls, kill -9 of `virga up` while they are being delivered,
//! restart; every call that got a 202 must be delivered at least once, and duplicates carry
//! the same call id.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{lines, Backend, Setup};
use virga_testkit::script;

const CALLS: usize = 2000;

pub fn kill9_delivers_every_accepted_call(b: Backend) {
    let started = Instant::now();
    let mut s = Setup::start(b);
    let file = s.dir.join("seen.calls");
    let sh = script(
        &s.dir,
        "seen.sh",
        &format!(
            "cat >/dev/null; echo \"$Http_X_Call_Id\" >> {}",
            file.display()
        ),
    );
    // Four at a time, so deliveries trail the accepts and the kill lands mid-stream.
    s.p.deploy_process(
        "seen",
        &sh,
        json!({"annotations": {"com.virga.async.max_inflight": "4"}}),
    );
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let url = s.p.url.clone();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let accepted = accepted.clone();
            let url = url.clone();
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                for i in (t..CALLS).step_by(8) {
                    let id = format!("crash-{i}");
                    let r = http
                        .post(format!("{url}/async-function/seen"))
                        .header("X-Call-Id", &id)
                        .body("x")
                        .send();
                    match r {
                        Ok(r) if r.status() == 202 => {
                            accepted.lock().unwrap().insert(id);
                        }
                        // The platform was killed: stop sending.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    // Every call submitted, then kill -9 while they are being delivered.
    for t in threads {
        t.join().unwrap();
    }
    s.p.kill9();
    let accepted = accepted.lock().unwrap().clone();
    let before = lines(&file).len();
    assert_eq!(
        accepted.len(),
        CALLS,
        "every call is accepted before the kill"
    );
    assert!(
        before < CALLS,
        "all delivered before the kill: nothing was tested"
    );
    s.p.restart();
    let all = s.p.eventually(Duration::from_secs(45), || {
        let seen: HashSet<String> = lines(&file).into_iter().collect();
        accepted.iter().all(|id| seen.contains(id))
    });
    std::thread::sleep(Duration::from_millis(300));
    let seen = lines(&file);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &seen {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let delivered = accepted
        .iter()
        .filter(|id| counts.contains_key(id.as_str()))
        .count();
    let duplicates: usize = counts.values().map(|&n| n.saturating_sub(1)).sum();
    println!(
        "crash test ({b:?}): accepted {} / delivered {} / duplicates {} \
         ({before} delivered before kill -9, {:.1}s)",
        accepted.len(),
        delivered,
        duplicates,
        started.elapsed().as_secs_f64()
    );
    assert!(
        all,
        "{} accepted calls never delivered",
        accepted.len() - delivered
    );
    // Duplicates carry the same call id: every id seen was an accepted one.
    for id in counts.keys() {
        assert!(id.starts_with("crash-"), "unknown call id {id:?}");
    }
}

/// Right after a crash, a child of the killed `virga up` that was between fork and exec still
/// shares the lock of `state.redb` until it dies: a restart waits for it instead of failing.
pub fn restart_waits_for_a_lock_left_by_a_dying_child() {
    use std::os::fd::AsRawFd;
    let mut s = Setup::start(Backend::Embedded);
    s.p.kill9();
    let file = std::fs::File::open(s.p.data_dir.join("state.redb")).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
    let held = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        drop(file);
    });
    let started = Instant::now();
    s.p.restart();
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "the lock was not held"
    );
    held.join().unwrap();
    assert_eq!(
        s.p.get_json("/system/info")["provider"]["provider"],
        "virga-local"
    );
}
