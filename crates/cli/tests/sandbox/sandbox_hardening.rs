//! Hardening of runc sandboxes, each shown from inside a real sandbox: the seccomp allow-list
//! refuses namespaces and io_uring, instances reach neither each other nor the host, mount
//! sources name no host path, limits a function cannot lift, classic calls leave no process
//! behind, private bundles, and network slots and cgroups (with what still runs in them) of
//! a platform that is gone are reclaimed.
//! These tests need root, runc and nft (`scripts/setup --test`); they fail rather than skip.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use virga_testkit::Platform;

fn start(dir: &Path, extra: &[&str]) -> Platform {
    Platform::start_runc(dir, extra)
}

fn key(data: &Path) -> String {
    std::fs::read_to_string(data.join("sandbox/key")).unwrap()
}

/// Deploy `code` as a classic python function run per request.
fn deploy_python(p: &Platform, name: &str, code: &str, extra: serde_json::Value) {
    p.deploy_bundle(name, &[("probe.py", code)], "python3 probe.py", extra);
}

/// The live sandboxes of the platform with data directory `data`: (container id, address,
/// pooled), from their bundles' config.json (the network namespace names the slot).
fn sandboxes(data: &Path) -> Vec<(String, Ipv4Addr, bool)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(data.join("sandbox/bundles"))
        .unwrap()
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(e.path().join("config.json")) else {
            continue;
        };
        let config: serde_json::Value = serde_json::from_str(&text).unwrap();
        let ns = config["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["type"] == "network")
            .unwrap()["path"]
            .as_str()
            .unwrap()
            .to_string();
        let slot: u32 = ns.rsplit("virga-").next().unwrap().parse().unwrap();
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 88, 0, 0)) + slot * 4 + 2);
        let id = e.file_name().to_string_lossy().into_owned();
        let pooled = data.join("sandbox/slots").join(&id).exists();
        found.push((id, ip, pooled));
    }
    found
}

const SYSCALLS: &str = r#"
import ctypes, errno, os, platform, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {"x86_64": dict(clone=56, clone3=435, unshare=272, io_uring_setup=425, setns=308),
      "aarch64": dict(clone=220, clone3=435, unshare=97, io_uring_setup=425, setns=268)}[platform.machine()]
CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17

def call(name, *args):
    r = libc.syscall(NR[name], *args)
    if r == 0 and name.startswith("clone"):
        os._exit(0)  # the child of a clone that should not have worked
    if r > 0 and name.startswith("clone"):
        os.waitpid(r, 0)
    print(name, "ok" if r >= 0 else errno.errorcode[ctypes.get_errno()])

flags = CLONE_NEWUSER | CLONE_NEWNET
call("clone", ctypes.c_ulong(flags | SIGCHLD), 0, 0, 0, 0)
args = (ctypes.c_uint64 * 11)(flags, 0, 0, 0, SIGCHLD, 0, 0, 0, 0, 0, 0)
call("clone3", ctypes.byref(args), ctypes.c_size_t(88))
call("unshare", ctypes.c_int(CLONE_NEWUSER))
params = (ctypes.c_ubyte * 120)()
call("io_uring_setup", ctypes.c_uint(4), ctypes.byref(params))
call("setns", ctypes.c_int(0), ctypes.c_int(0))
# What ordinary programs do still works: fork, threads, a subprocess.
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
t = threading.Thread(target=lambda: None); t.start(); t.join()
print("thread ok")
print("subprocess", os.popen("echo hi").read().strip())
print("bash", os.popen("bash -c 'echo $((6 * 7))'").read().strip())
print("coreutils", os.popen("printf 'b\\na\\n' | sort | head -1 && date +%Y >/dev/null && ls / >/dev/null && echo ok").read().split())
"#;

/// Node under the profile: threads (a worker), the libuv pool, a child process, crypto.
const NODE_PROBE: &str = r#"
const { Worker } = require('worker_threads')
const fs = require('fs')
const w = new Worker('require("crypto").randomBytes(8)', { eval: true })
w.on('exit', async (code) => {
  await fs.promises.writeFile('/tmp/n', 'written')
  const read = await fs.promises.readFile('/tmp/n', 'utf8')
  const child = require('child_process').execSync('echo child').toString().trim()
  console.log('node', code, read, child)
})
"#;

#[test]
fn namespaces_io_uring_and_clone3_are_refused_and_ordinary_calls_work() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &["--warm-pool", "1"]);
    deploy_python(&p, "syscalls", SYSCALLS, json!({}));
    p.deploy_bundle(
        "node",
        &[("probe.js", NODE_PROBE)],
        "node probe.js",
        json!({}),
    );
    assert_eq!(
        p.invoke("node", "").text().unwrap(),
        "node 0 written child\n"
    );
    // The node template from the warm pool.
    let js = "'use strict'\nmodule.exports = async (event, context) => context.status(200).succeed({ pid: process.pid > 0 })\n";
    new_function_from(&p, work.path(), "js", "node20", "handler.js", js);
    let r = p.invoke("js", "");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "{\"pid\":true}");
    let r = p.invoke("syscalls", "");
    assert_eq!(r.status(), 200);
    let out = r.text().unwrap();
    eprintln!("{out}");
    for line in [
        "clone EPERM",
        "clone3 ENOSYS",
        "unshare EPERM",
        "io_uring_setup EPERM",
        "setns EPERM",
        "fork 7",
        "thread ok",
        "subprocess hi",
        "bash 42",
        "coreutils ['a', 'ok']",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "expected {line:?} in:\n{out}"
        );
    }
}

const NET_PROBE: &str = r#"
import json, socket, sys, threading
req = json.load(sys.stdin)
own = host = None
for line in open("/proc/net/route").read().splitlines()[1:]:
    f = line.split()
    if f[1] != "00000000":
        net = int.from_bytes(bytes.fromhex(f[1]), "little")
        host = socket.inet_ntoa((net + 1).to_bytes(4, "big"))
        own = socket.inet_ntoa((net + 2).to_bytes(4, "big"))
targets = [t for t in req["targets"] if not t.startswith(own + ":")]  # IPv6 ones included
targets += ["%s:%d" % (h, req["host_port"]) for h in [host] + req["host_addrs"]]
targets.append(req["world"])
results = {}
def attempt(t):
    h, port = t.rsplit(":", 1)
    try:
        s = socket.create_connection((h, int(port)), 1.5)
    except OSError:
        results[t] = "unreachable"
        return
    # Connected is reachable; the host's and the world's servers also say something.
    s.settimeout(0.5)
    try:
        said = s.recv(64).decode().strip()
    except OSError:
        said = ""
    results[t] = ("reachable " + said).strip()
    s.close()
threads = [threading.Thread(target=attempt, args=(t,)) for t in targets]
for t in threads: t.start()
for t in threads: t.join()
print("host", host)
for t in targets:
    print(t, results[t])
"#;

/// A network namespace standing for the world beyond the host: a veth (host end not named
/// `vg*`, so not an instance) with a /30, and a server in it answering each connection with
/// the peer's address. Removed on drop.
struct World {
    ns: String,
    server: Child,
    addr: SocketAddr,
    /// The host's address on the world's link: what a masqueraded connection comes from.
    host: Ipv4Addr,
}

impl World {
    fn new() -> World {
        let n = std::process::id() % 60000;
        let (ns, hif) = (format!("virga-test-world-{n}"), format!("vwld{n}"));
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (n % 16000) * 4;
        let (host, world) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let ip = |args: &str| {
            let ok = Command::new("ip")
                .args(args.split(' '))
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args}");
        };
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        ip(&format!("netns add {ns}"));
        ip(&format!(
            "link add {hif} type veth peer name eth0 netns {ns}"
        ));
        ip(&format!("addr add {host}/30 dev {hif}"));
        ip(&format!("link set {hif} up"));
        ip(&format!("-n {ns} addr add {world}/30 dev eth0"));
        ip(&format!("-n {ns} link set eth0 up"));
        let server = "import socket\ns = socket.socket(); s.bind(('0.0.0.0', 9000)); s.listen(16)\nprint('ready', flush=True)\nwhile True:\n    c, a = s.accept(); c.sendall(a[0].encode() + b'\\n'); c.close()\n";
        let mut server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c", server])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        World {
            ns,
            server,
            addr: SocketAddr::from((world, 9000)),
            host,
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// The host's own IPv4 addresses other than loopback and instance ends.
fn host_addrs() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.split_whitespace()
                .nth(3)?
                .split('/')
                .next()
                .map(String::from)
        })
        .filter(|a| !a.starts_with("127.") && !a.starts_with("10.88.") && !a.starts_with("198.18."))
        .collect()
}

/// A listener on the host on every address (`[::]`, IPv4 too) that greets each connection.
fn host_listener() -> u16 {
    let listener = TcpListener::bind("[::]:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in listener.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut c, b"host\n");
        }
    });
    port
}

/// The IPv6 link-local address of the host end of the sandbox at `ip`, as its instance
/// names it (`fe80::...%eth0`).
fn host_link_local(ip: Ipv4Addr) -> String {
    let slot = (u32::from(ip) - u32::from(Ipv4Addr::new(10, 88, 0, 0))) / 4;
    let out = Command::new("ip")
        .args(["-6", "-o", "addr", "show", "dev", &format!("vg{slot}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let addr = text
        .split_whitespace()
        .find(|w| w.starts_with("fe80::"))
        .unwrap_or_else(|| panic!("no link-local address on vg{slot}: {text}"));
    format!("{}%eth0", addr.split('/').next().unwrap())
}

/// Whether the warm pool holds a ready python3-http sandbox (`virga_warm_pool_instances`).
fn pool_ready(p: &Platform) -> bool {
    let metrics = p
        .anon(reqwest::Method::GET, "/metrics")
        .send()
        .unwrap()
        .text()
        .unwrap();
    metrics.lines().any(|l| {
        l.starts_with("virga_warm_pool_instances{function_name=\"python3-http-")
            && l.ends_with(" 1")
    })
}

/// Start a platform with a pooled sandbox and a classic one of another namespace, a second
/// platform with one, and the probes `open` and `closed`; every sandbox of both.
fn network_scene(
    p: &Platform,
    data: &Path,
    other: &Platform,
    other_data: &Path,
) -> Vec<(String, Ipv4Addr, bool)> {
    let work = tempfile::tempdir().unwrap();
    // A pooled sandbox: the pool fills once a function can use it.
    new_template_function(p, work.path(), "pooled", MOUNTINFO_HANDLER);
    // Ready by the pool's own count: a bundle alone may belong to a sandbox still starting.
    let ready = || pool_ready(p) && sandboxes(data).iter().any(|s| s.2);
    assert!(
        p.eventually(Duration::from_secs(60), ready),
        "no pooled sandbox"
    );
    // Another tenant's function on the same platform.
    let r = p.send_json(
        reqwest::Method::POST,
        "/system/namespace/",
        json!({"name": "tenant-b"}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    p.deploy_script("target", "cat", json!({"namespace": "tenant-b"}));
    assert_eq!(
        p.invoke("target.tenant-b", "alive").text().unwrap(),
        "alive"
    );
    other.deploy_script("theirs", "cat", json!({}));
    assert_eq!(other.invoke("theirs", "x").text().unwrap(), "x");
    deploy_python(p, "open", NET_PROBE, json!({}));
    let closed = json!({"annotations": {"virga.network.outbound": "false"}});
    deploy_python(p, "closed", NET_PROBE, closed);
    let nothing = json!({"targets": [], "host_port": 1, "host_addrs": [], "world": "0.0.0.0:1"});
    for probe in ["open", "closed"] {
        assert_eq!(p.invoke(probe, &nothing.to_string()).status(), 200);
    }
    let mut all = sandboxes(data);
    all.extend(sandboxes(other_data));
    assert!(all.iter().any(|s| s.0.contains("-theirs-")), "{all:?}");
    all
}

#[test]
fn instances_reach_neither_each_other_nor_the_host() {
    let world = World::new();
    let host_port = host_listener();
    let (data, other_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let p = start(data.path(), &["--warm-pool", "1"]);
    let other = start(other_data.path(), &["--warm-pool", "0"]);
    let all = network_scene(&p, data.path(), &other, other_data.path());
    let targets: Vec<String> = all.iter().map(|s| format!("{}:8080", s.1)).collect();
    // The host reaches every watchdog: that is how the platform calls them.
    for t in &targets {
        let addr: SocketAddr = t.parse().unwrap();
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
            "host cannot reach {t}"
        );
    }
    // Outbound on: only the world answers, and it sees the host's address (masqueraded).
    let world_line = format!("{} reachable {}", world.addr, world.host);
    let mut got = Vec::new();
    for (probe, want) in [("open", vec![world_line]), ("closed", vec![])] {
        let own = all
            .iter()
            .find(|s| s.0.contains(&format!("-{probe}-")))
            .unwrap();
        let v6 = format!("{}:{host_port}", host_link_local(own.1));
        let body = json!({
            "targets": targets.iter().chain([&v6]).collect::<Vec<_>>(),
            "host_port": host_port,
            "host_addrs": host_addrs(),
            "world": world.addr.to_string(),
        });
        let out = p.invoke(probe, &body.to_string()).text().unwrap();
        eprintln!("{probe}:\n{out}");
        let tried = out.lines().skip(1).count();
        assert!(tried > all.len() + 1, "{probe} tried only {tried}:\n{out}");
        let reached: Vec<String> = out
            .lines()
            .skip(1)
            .filter(|l| l.contains(" reachable"))
            .map(String::from)
            .collect();
        got.push((probe, reached, want));
    }
    for (probe, reached, want) in got {
        assert_eq!(reached, want, "what the {probe} probe reached");
    }
    assert_eq!(
        p.invoke("target.tenant-b", "still").text().unwrap(),
        "still"
    );
}

const MOUNTINFO_HANDLER: &str =
    "def handle(event, context):\n    return {'body': open('/proc/self/mountinfo').read()}\n";

/// A python3-http function `name` (scale.min 0, so its instances start from the warm pool)
/// with `handler` as its handler.py.
fn new_template_function(p: &Platform, work: &Path, name: &str, handler: &str) {
    new_function_from(p, work, name, "python3-http", "handler.py", handler);
}

/// A function `name` from template `lang` with `code` as its `file`, deployed with a secret.
fn new_function_from(p: &Platform, work: &Path, name: &str, lang: &str, file: &str, code: &str) {
    p.create_secret("token", "t");
    p.cli(work, &["new", name, "--lang", lang]);
    std::fs::write(work.join(name).join(file), code).unwrap();
    let stack = format!("provider:\n  name: openfaas\nfunctions:\n  {name}:\n    lang: {lang}\n    handler: ./{name}\n    secrets: [token]\n    labels:\n      com.openfaas.scale.min: \"0\"\n");
    std::fs::write(work.join("stack.yml"), stack).unwrap();
    p.cli(work, &["deploy", "-f", "stack.yml"]);
}

const LIMITS_PROBE: &str = r#"
import os, resource
print(open("/proc/self/mountinfo").read())
for d in ["/tmp", "/dev/shm"]:
    st = os.statvfs(d)
    print("size", d, st.f_blocks * st.f_frsize >> 20)
print("nofile", *resource.getrlimit(resource.RLIMIT_NOFILE))
"#;

/// `p`'s permission bits, or `gone` if it was removed meanwhile (the pool may stop a sandbox).
fn mode(p: &Path, gone: u32) -> u32 {
    std::fs::metadata(p).map_or(gone, |m| m.permissions().mode() & 0o777)
}

/// The CPU limit written into the cgroup of `key`'s container whose id starts with `prefix`.
fn cpu_limit(key: &str, prefix: &str) -> String {
    for (dir, file) in [
        (
            format!("/sys/fs/cgroup/cpu/virga-{key}"),
            "cpu.cfs_quota_us",
        ),
        (format!("/sys/fs/cgroup/virga-{key}"), "cpu.max"),
    ] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) {
                return std::fs::read_to_string(e.path().join(file)).unwrap();
            }
        }
    }
    panic!("no cgroup for {prefix}");
}

#[test]
fn sandboxes_show_no_host_paths_and_have_default_limits() {
    let work = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let p = start(data.path(), &["--warm-pool", "1"]);
    new_template_function(&p, work.path(), "pooled-seeker", MOUNTINFO_HANDLER);
    deploy_python(&p, "seeker", LIMITS_PROBE, json!({"secrets": ["token"]}));
    let out = p.invoke("seeker", "").text().unwrap();
    eprintln!("{out}");
    let r = p.invoke("pooled-seeker", "");
    assert_eq!(r.status(), 200);
    let pooled = r.text().unwrap();
    eprintln!("{pooled}");
    assert!(pooled.contains(" /home/app "), "{pooled}");
    // Every finding is collected first, so one run shows all that is wrong.
    let mut wrong = Vec::new();
    let data_dir = std::fs::canonicalize(data.path()).unwrap();
    for (what, info) in [("classic", &out), ("pooled", &pooled)] {
        for secret in [
            data_dir.to_str().unwrap(),
            "seeker",
            "/sandbox/",
            "bundles",
            "slots",
        ] {
            if info.contains(secret) {
                wrong.push(format!("{what} sandbox's mountinfo shows {secret:?}"));
            }
        }
    }
    for line in ["size /tmp 60", "size /dev/shm 4", "nofile 1024 4096"] {
        if !out.lines().any(|l| l == line) {
            wrong.push(format!("no {line:?}"));
        }
    }
    let k = key(data.path());
    let quota = cpu_limit(&k, &format!("{k}-seeker-"));
    if !["100000", "100000 100000"].contains(&quota.trim()) {
        wrong.push(format!("cpu limit {}", quota.trim()));
    }
    let bundles = data.path().join("sandbox/bundles");
    let mut seen = 0;
    for dir in std::iter::once(bundles.clone()).chain(
        std::fs::read_dir(&bundles)
            .unwrap()
            .flatten()
            .map(|e| e.path()),
    ) {
        if mode(&dir, 0o700) != 0o700 {
            wrong.push(format!("{} is {:o}", dir.display(), mode(&dir, 0o700)));
        }
        let config = dir.join("config.json");
        if config.exists() {
            seen += 1;
            if mode(&config, 0o600) != 0o600 {
                wrong.push(format!(
                    "{} is {:o}",
                    config.display(),
                    mode(&config, 0o600)
                ));
            }
        }
    }
    assert_eq!(wrong, Vec::<String>::new());
    assert!(seen >= 2, "{seen} bundles");
}

#[test]
fn a_classic_call_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let p = start(dir.path(), &[]);
    // `setsid` leaves the call's process group; `sleep` is the daemon. The starting call
    // waits until the daemon runs `sleep`, then every call counts the live `sleep`s.
    let script = "count() { n=0; for s in /proc/[0-9]*/stat; do read -r _ c st _ < $s 2>/dev/null || continue; \
        [ \"$c\" = '(sleep)' ] && [ \"$st\" != Z ] && n=$((n+1)); done; echo $n; }\n\
        if [ \"$(cat)\" = start ]; then setsid sleep 1000 </dev/null >/dev/null 2>&1 &\n\
        i=0; while [ \"$(count)\" = 0 ] && [ $i -lt 200 ]; do i=$((i+1)); done; fi\n\
        count\n";
    p.deploy_script("daemon", script, json!({}));
    assert_eq!(p.invoke("daemon", "start").text().unwrap().trim(), "1");
    let mut last = String::new();
    let gone = p.eventually(Duration::from_secs(5), || {
        last = p.invoke("daemon", "count").text().unwrap();
        last.trim() == "0"
    });
    assert!(gone, "the daemon outlived its call: {last}");
}

/// Network slot files and namespaces of the platform with key `key`.
fn slots_of(key: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/run/virga-net/slots").unwrap().flatten() {
        let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
        if owner.split_whitespace().next() == Some(key) {
            let n = e.file_name().to_string_lossy().into_owned();
            found.push(format!("slot {n}"));
            if Path::new(&format!("/run/netns/virga-{n}")).exists() {
                found.push(format!("netns virga-{n}"));
            }
            if Path::new(&format!("/sys/class/net/vg{n}")).exists() {
                found.push(format!("veth vg{n}"));
            }
        }
    }
    found
}

#[test]
fn network_slots_of_a_platform_that_is_gone_are_reclaimed() {
    let gone = tempfile::tempdir().unwrap();
    let data: PathBuf = gone.path().join("data");
    let mut p = start(&data, &[]);
    p.deploy_script("echo", "cat", json!({}));
    assert_eq!(p.invoke("echo", "x").text().unwrap(), "x");
    let k = key(&data);
    let before = slots_of(&k);
    assert!(before.iter().any(|s| s.starts_with("netns")), "{before:?}");
    p.kill9();
    // Its data directory goes too, so it never starts again to clean up after itself.
    let _ = Command::new("rm").arg("-rf").arg(&data).status();
    drop(p);
    assert_eq!(
        slots_of(&k),
        before,
        "slots vanished before another platform started"
    );

    let other = tempfile::tempdir().unwrap();
    let q = start(other.path(), &[]);
    assert_eq!(slots_of(&k), Vec::<String>::new());
    drop(q);
}

/// The cgroup directories (in every hierarchy) of the platform with key `key`.
fn cgroups_of(key: &str) -> Vec<PathBuf> {
    let name = format!("virga-{key}");
    let root = Path::new("/sys/fs/cgroup");
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|ctrl| ctrl.path().join(&name))
        .chain([root.join(&name)])
        .filter(|p| p.is_dir())
        .collect()
}

/// A process of the test's, killed when dropped.
struct Stray(Child);

impl Drop for Stray {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sandboxes_of_a_platform_that_is_gone_are_reclaimed() {
    let gone = tempfile::tempdir().unwrap();
    let data: PathBuf = gone.path().join("data");
    let mut p = start(&data, &[]);
    p.deploy_script("echo", "cat", json!({}));
    assert_eq!(p.invoke("echo", "x").text().unwrap(), "x");
    let k = key(&data);
    // A process in the sandbox's cgroup that does not die with the platform, as a sandbox
    // caught between `runc create` and its start does (`runc init` waits forever).
    let parent = [
        format!("/sys/fs/cgroup/pids/virga-{k}"),
        format!("/sys/fs/cgroup/virga-{k}"),
    ]
    .into_iter()
    .find(|d| Path::new(d).is_dir())
    .expect("the platform's cgroup (v1 pids, or v2)");
    let cgroup = std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{k}-echo-"))
        })
        .expect("the instance's cgroup")
        .path();
    let mut stray = Stray(
        Command::new("sleep")
            .arg("1000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::fs::write(cgroup.join("cgroup.procs"), stray.0.id().to_string()).unwrap();
    p.kill9();
    // Its data directory goes too, runc's state with it: it never cleans up after itself.
    let _ = Command::new("rm")
        .arg("-rf")
        .arg(&data)
        .stderr(Stdio::null())
        .status();
    drop(p);
    assert!(!cgroups_of(&k).is_empty());

    let other = tempfile::tempdir().unwrap();
    let q = start(other.path(), &[]);
    let running = stray.0.try_wait().unwrap().is_none();
    assert_eq!(
        (cgroups_of(&k), running),
        (Vec::<PathBuf>::new(), false),
        "cgroups left, and whether the process in one still runs"
    );
    drop(q);
}
