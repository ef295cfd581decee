//! Isolation through the real runc: limits are enforced, a function sees nothing of the
//! platform or of other functions, and nothing is left behind. These tests need root and
//! runc (`scripts/setup` installs it); they fail rather than skip without them.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use virga_testkit::{sandbox_leftovers, Platform};

fn start(dir: &Path) -> Platform {
    Platform::start_runc(dir, &[])
}

#[test]
fn memory_limit_kills_with_a_clear_message_and_others_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path());
    p.deploy_script("echo", "cat", json!({}));
    p.deploy_bundle(
        "hog",
        &[(
            "hog.py",
            "import sys\nn = int(sys.stdin.read() or '0')\nblocks = [bytearray(n << 20)]\nprint('allocated', n, 'MiB')\n",
        )],
        "python3 hog.py",
        json!({"limits": {"memory": "64Mi"}}),
    );
    assert_eq!(
        p.invoke("hog", "8").text().unwrap().trim(),
        "allocated 8 MiB"
    );
    let r = p.invoke("hog", "300");
    assert!(r.status().is_server_error(), "{}", r.status());
    let msg = r.text().unwrap();
    assert!(msg.contains("out of memory"), "{msg}");
    assert_eq!(p.invoke("echo", "alive").text().unwrap(), "alive");
    assert_eq!(
        p.invoke("hog", "8").text().unwrap().trim(),
        "allocated 8 MiB"
    );
}

#[test]
fn fork_bomb_is_stopped_and_cpu_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path());
    p.deploy_script("echo", "cat", json!({}));
    // Forks until the kernel refuses; the children stay alive (without our stdout).
    p.deploy_bundle(
        "bomb",
        &[(
            "bomb.py",
            "import os, time\nn = 0\ntry:\n    while n < 100000:\n        if os.fork() == 0:\n            os.close(1); os.close(2); time.sleep(60); os._exit(0)\n        n += 1\nexcept OSError as e:\n    print(n, e.errno)\n",
        )],
        "python3 bomb.py",
        json!({"envVars": {"exec_timeout": "10s"}}),
    );
    // Twice: what the first call left behind must not starve the second.
    for round in 0..2 {
        let started = Instant::now();
        let r = p.invoke("bomb", "");
        assert!(started.elapsed() < Duration::from_secs(20));
        let status = r.status();
        let text = r.text().unwrap();
        eprintln!(
            "fork bomb round {round}: {status}, forks before refusal and errno: {}",
            text.trim()
        );
        assert_eq!(status, 200, "{text}");
        let (forks, errno) = text.trim().split_once(' ').unwrap();
        let forks: usize = forks.parse().unwrap();
        assert!((50..128).contains(&forks), "forks {forks}");
        assert_eq!(errno, libc::EAGAIN.to_string());
        assert_eq!(p.invoke("echo", "alive").text().unwrap(), "alive");
    }

    p.deploy_bundle(
        "spin",
        &[(
            "spin.py",
            "import time\nend = time.time() + 2.0\nwhile time.time() < end:\n    pass\nprint(time.process_time())\n",
        )],
        "python3 spin.py",
        json!({"limits": {"cpu": "0.5"}}),
    );
    let cpu: f64 = p.invoke("spin", "").text().unwrap().trim().parse().unwrap();
    eprintln!("busy loop for 2 s of wall time used {cpu:.2} s of CPU with cpu: 0.5");
    assert!((0.6..=1.3).contains(&cpu), "cpu seconds {cpu}");
}

#[test]
fn a_function_sees_nothing_of_the_platform_or_other_functions() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path());
    p.create_secret("mine", "my-secret");
    p.create_secret("theirs", "their-secret");
    p.deploy_script("other", "cat", json!({"secrets": ["theirs"]}));
    let data = std::fs::canonicalize(dir.path()).unwrap();
    let probe = format!(
        r#"
try() {{ if "$@" >/dev/null 2>&1; then echo "$*: yes"; else echo "$*: no"; fi; }}
echo "uid $(id -u)"
try cat {data}/state.redb
try ls {data}/bundles
try cat {data}/admin-password
try ls /var/openfaas/secrets/theirs
try touch /home/app/x
try touch /x
try touch /usr/x
try touch /tmp/x
echo "secrets $(ls /var/openfaas/secrets | tr '\n' ' ')"
echo "secret $(cat /var/openfaas/secrets/mine)"
echo "processes $(ls /proc | grep -c '^[0-9]')"
echo "init $(cat /proc/1/cmdline | tr '\0' ' ')"
python3 - <<'PY'
import os, socket, struct
# The host's end of the instance's veth (its default route), and the instance's own loopback.
hosts = ["127.0.0.1"]
for line in open("/proc/net/route").read().splitlines()[1:]:
    f = line.split()
    if f[1] == "00000000":
        hosts.append(socket.inet_ntoa(struct.pack("<L", int(f[2], 16))))
for host in hosts:
    try:
        socket.create_connection((host, int(os.environ["GATEWAY_PORT"])), 1).close()
        print("gateway reachable at", host)
    except OSError:
        print("gateway unreachable at", host)
PY
"#,
        data = data.display()
    );
    let port = p.url.rsplit(':').next().unwrap().to_string();
    p.deploy_script(
        "probe",
        &probe,
        json!({"secrets": ["mine"], "envVars": {"GATEWAY_PORT": port}}),
    );
    let out = p.invoke("probe", "").text().unwrap();
    eprintln!("{out}");
    let uid: u32 = out
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("uid ")
        .parse()
        .unwrap();
    assert_ne!(uid, 0, "runs as root");
    for line in [
        &format!("cat {}/state.redb: no", data.display()),
        &format!("ls {}/bundles: no", data.display()),
        &format!("cat {}/admin-password: no", data.display()),
        "ls /var/openfaas/secrets/theirs: no",
        "touch /home/app/x: no",
        "touch /x: no",
        "touch /usr/x: no",
        "touch /tmp/x: yes",
        "secrets mine ",
        "secret my-secret",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "expected {line:?} in:\n{out}"
        );
    }
    let procs: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("processes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        procs < 10,
        "sees {procs} processes: host processes are visible"
    );
    assert!(out.contains("init /virga/watchdog"), "{out}");
    // Neither loopback nor the host side of its network reaches the platform's API.
    let unreachable = out
        .lines()
        .filter(|l| l.starts_with("gateway unreachable at "))
        .count();
    assert_eq!(unreachable, 2, "{out}");
    assert!(!out.contains("gateway reachable"), "{out}");
}

#[test]
fn deleting_and_stopping_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = start(dir.path());
    p.deploy_script("a", "cat", json!({}));
    p.deploy_script(
        "b",
        "cat",
        json!({"annotations": {"virga.network.outbound": "false"}}),
    );
    assert_eq!(p.invoke("a", "x").text().unwrap(), "x");
    assert_eq!(p.invoke("b", "y").text().unwrap(), "y");
    let before = sandbox_leftovers(dir.path());
    assert!(
        before.iter().any(|l| l.starts_with("container")),
        "{before:?}"
    );
    assert!(before.iter().any(|l| l.starts_with("netns")), "{before:?}");

    let r = p.send_json(
        Method::DELETE,
        "/system/functions",
        json!({"functionName": "a"}),
    );
    assert_eq!(r.status, 200);
    let ok = p.eventually(Duration::from_secs(10), || {
        sandbox_leftovers(dir.path())
            .iter()
            .filter(|l| l.starts_with("container"))
            .count()
            == 1
    });
    assert!(ok, "{:?}", sandbox_leftovers(dir.path()));

    assert!(p.terminate().success());
    assert_eq!(sandbox_leftovers(dir.path()), Vec::<String>::new());

    // After kill -9 the next start removes what the crashed run left and serves again.
    p.restart();
    assert_eq!(p.invoke("b", "again").text().unwrap(), "again");
    p.kill9();
    p.restart();
    assert_eq!(p.invoke("b", "still").text().unwrap(), "still");
    assert!(p.terminate().success());
    assert_eq!(sandbox_leftovers(dir.path()), Vec::<String>::new());
}

#[test]
fn outbound_network_is_on_by_default_and_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path());
    let show = "cat /proc/net/route | awk 'NR > 1 && $2 == \"00000000\" { print \"default route\" }'; echo done";
    p.deploy_script("open", show, json!({}));
    p.deploy_script(
        "closed",
        show,
        json!({"annotations": {"virga.network.outbound": "false"}}),
    );
    assert_eq!(
        p.invoke("open", "").text().unwrap(),
        "default route\ndone\n"
    );
    assert_eq!(p.invoke("closed", "").text().unwrap(), "done\n");
}

#[test]
fn a_relative_data_directory_works_in_sandboxes() {
    // `virga up` defaults to `./.virga`: sandbox configs and mounts must still get absolute paths.
    let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let cwd = std::env::current_dir().unwrap();
    let rel = pathdiff(base.path(), &cwd).join("data");
    assert!(rel.is_relative());
    let p = start(&rel);
    p.deploy_script("echo", "cat", json!({}));
    assert_eq!(p.invoke("echo", "relative").text().unwrap(), "relative");
}

/// `path` relative to `from` (both absolute).
fn pathdiff(path: &Path, from: &Path) -> std::path::PathBuf {
    let (p, f): (Vec<_>, Vec<_>) = (path.components().collect(), from.components().collect());
    let common = p.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut out = std::path::PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &p[common..] {
        out.push(c);
    }
    out
}
