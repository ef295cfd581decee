//! The warm pool: functions built from python3-http and node start by binding a pre-started
//! runtime (no process or interpreter start on the request path), get their own environment,
//! secrets, working directory and logs, and functions that set watchdog variables of their
//! own still start the cold way.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::Method;
use virga_testkit::{sandbox_leftovers, Platform};

/// `virga new NAME --lang LANG` in `dir`, then replace its handler file with `code`.
fn new_function(p: &Platform, dir: &Path, name: &str, lang: &str, file: &str, code: &str) {
    p.cli(dir, &["new", name, "--lang", lang]);
    std::fs::write(dir.join(name).join(file), code).unwrap();
}

/// How many of `name`'s starts bound a pooled runtime (`virga_warm_starts_total`).
fn warm_starts(p: &Platform, name: &str) -> Option<f64> {
    p.metric(&format!(
        "virga_warm_starts_total{{function_name=\"{name}.openfaas-fn\"}}"
    ))
}

/// Everything `name`'s instances logged.
fn function_logs(p: &Platform, name: &str) -> String {
    p.sys(Method::GET, &format!("/system/logs?name={name}&tail=-1"))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

const STACK: &str = r#"
provider:
  name: openfaas
functions:
  py:
    lang: python3-http
    handler: ./py
    environment:
      GREETING: hola
    secrets: [token]
    labels:
      com.openfaas.scale.min: "0"
  js:
    lang: node20
    handler: ./js
    environment:
      GREETING: ciao
    labels:
      com.openfaas.scale.min: "0"
  slow:
    lang: python3-http
    handler: ./py
    environment:
      exec_timeout: 5s
    secrets: [token]
    labels:
      com.openfaas.scale.min: "0"
"#;

#[test]
fn cold_starts_bind_pre_started_runtimes() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let p = Platform::start_with(data.path(), &["--isolation", "process", "--warm-pool", "1"]);
    new_function(&p, dir, "py", "python3-http", "handler.py", "import os, sys\n\ndef handle(event, context):\n    print('py handled', file=sys.stderr, flush=True)\n    token = open(os.path.join(os.environ['secret_mount_path'], 'token')).read()\n    return {'body': {'greeting': os.environ.get('GREETING'), 'token': token, 'cwd': os.getcwd()}}\n");
    new_function(
        &p,
        dir,
        "js",
        "node20",
        "handler.js",
        "const fs = require('fs')\nmodule.exports = async (event, context) => context.status(200).succeed({ greeting: process.env.GREETING, cwd: process.cwd(), parent: fs.readFileSync(`/proc/${process.ppid}/comm`, 'utf8').trim() })\n",
    );
    std::fs::write(dir.join("stack.yml"), STACK).unwrap();
    p.create_secret("token", "t0k");
    p.cli(dir, &["deploy", "-f", "stack.yml"]);

    // Both runtimes' pools fill (one pre-started runtime each).
    let pool_full = |lang: &str| {
        let text = p
            .anon(Method::GET, "/metrics")
            .send()
            .unwrap()
            .text()
            .unwrap();
        text.lines().any(|l| {
            l.starts_with(&format!(
                "virga_warm_pool_instances{{function_name=\"{lang}-"
            )) && l.ends_with(" 1")
        })
    };
    let filled = p.eventually(Duration::from_secs(30), || {
        pool_full("python3-http") && pool_full("node20")
    });
    assert!(filled, "warm pools did not fill");

    let py: serde_json::Value = p.invoke("py", "").json().unwrap();
    assert_eq!(py["greeting"], "hola");
    assert_eq!(py["token"], "t0k");
    let bundle_dir = py["cwd"].as_str().unwrap();
    assert!(bundle_dir.contains("bundles"), "{py}");
    let js: serde_json::Value = p.invoke("js", "").json().unwrap();
    assert_eq!(js["greeting"], "ciao");
    assert_ne!(js["cwd"].as_str().unwrap(), bundle_dir);
    // The node pool refills with full runtimes, even with its zygote up by now (a forked
    // one runs V8 single-threaded): the next start from zero gets one.
    assert!(p.eventually(Duration::from_secs(30), || pool_full("node20")));
    p.scale_to_zero("js");
    let js: serde_json::Value = p.invoke("js", "").json().unwrap();
    assert_eq!(js["parent"], "virga-watchdog", "{js}");
    assert_eq!(warm_starts(&p, "py"), Some(1.0));
    assert_eq!(warm_starts(&p, "js"), Some(2.0));

    // The function's output is in its own log, under its own instance.
    let logs = function_logs(&p, "py");
    assert!(logs.contains("py handled"), "{logs}");
    assert!(logs.contains("\"instance\":\"py-"), "{logs}");

    // A function with its own watchdog settings takes the cold path, and still works.
    let slow = p.invoke("slow", "").text().unwrap();
    let slow: serde_json::Value =
        serde_json::from_str(&slow).unwrap_or_else(|e| panic!("{e}: {slow}"));
    assert!(slow["cwd"].as_str().is_some());
    assert_eq!(warm_starts(&p, "slow"), None);
}

#[test]
fn sandboxed_cold_starts_bind_pooled_sandboxes_read_only() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let mut p = Platform::start_runc(data.path(), &["--warm-pool", "1"]);
    new_function(&p, dir, "py", "python3-http", "handler.py", "import os\n\ndef handle(event, context):\n    try:\n        open('/home/app/x', 'w')\n        code = 'writable'\n    except OSError:\n        code = 'read-only'\n    token = open('/var/openfaas/secrets/token').read()\n    return {'body': {'greeting': os.environ.get('GREETING'), 'token': token, 'code': code, 'uid': os.getuid()}}\n");
    let stack = "provider:\n  name: openfaas\nfunctions:\n  py:\n    lang: python3-http\n    handler: ./py\n    environment:\n      GREETING: hej\n    secrets: [token]\n    limits:\n      memory: 96Mi\n    labels:\n      com.openfaas.scale.min: \"0\"\n";
    std::fs::write(dir.join("stack.yml"), stack).unwrap();
    p.create_secret("token", "s3c");
    p.cli(dir, &["deploy", "-f", "stack.yml"]);
    let filled = p.eventually(Duration::from_secs(30), || {
        p.metric("virga_warm_pool_instances{function_name=\"python3-http-") == Some(1.0)
    });
    assert!(filled, "warm pool did not fill");
    let text = p.invoke("py", "").text().unwrap();
    let py: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(py["greeting"], "hej");
    assert_eq!(py["token"], "s3c");
    assert_eq!(py["code"], "read-only");
    assert_ne!(py["uid"], 0);
    assert_eq!(warm_starts(&p, "py"), Some(1.0));

    let r = p
        .sys(Method::DELETE, "/system/functions")
        .json(&serde_json::json!({"functionName": "py"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(p.terminate().success());
    assert_eq!(sandbox_leftovers(data.path()), Vec::<String>::new());
}

/// A handler for each forkable template that reports its runtime's parent process, its
/// environment's GREETING, whether its pid is right (a forked runtime must not keep the
/// zygote's) and a random number (forked runtimes must not share the zygote's random state).
const PARENT_REPORTERS: [(&str, &str, &str); 2] = [
    ("python3-http", "handler.py", "import os, random, sys\n\ndef handle(event, context):\n    print('handler ran', file=sys.stderr, flush=True)\n    parent = open('/proc/%d/comm' % os.getppid()).read().strip()\n    own_pid = os.getpid() == int(os.readlink('/proc/self'))\n    return {'body': {'parent': parent, 'greeting': os.environ.get('GREETING'), 'own_pid': own_pid, 'random': random.random()}}\n"),
    ("node20", "handler.js", "'use strict'\nconst fs = require('fs')\nmodule.exports = async (event, context) => {\n  if (event.query.crash) setTimeout(() => { throw new Error('boom') }, 10)\n  console.error('handler ran')\n  const parent = fs.readFileSync(`/proc/${process.ppid}/comm`, 'utf8').trim()\n  const ownPid = process.pid === Number(fs.readlinkSync('/proc/self'))\n  return { parent, greeting: process.env.GREETING, own_pid: ownPid, random: Math.random() }\n}\n"),
];

/// Deploy `fn` from `lang` (its handler from [`PARENT_REPORTERS`]) on a platform without a
/// warm pool (its data directory `data_subdir` in a temporary one), then call it from zero until its runtime's parent is `want` (the zygote is
/// ready a moment after the deploy) or 30 s pass; the last answer, once `then` has run
/// against the platform.
fn runtime_parent(
    lang: &str,
    data_subdir: &str,
    extra: &[&str],
    want: &str,
    then: impl FnOnce(&Platform, &serde_json::Value),
) -> serde_json::Value {
    let (_, file, code) = PARENT_REPORTERS
        .iter()
        .find(|(l, _, _)| *l == lang)
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let mut args = vec!["--isolation", "process", "--warm-pool", "0"];
    args.extend_from_slice(extra);
    let p = Platform::start_with(&data.path().join(data_subdir), &args);
    new_function(&p, dir, "fn", lang, file, code);
    let stack = format!("provider:\n  name: openfaas\nfunctions:\n  fn:\n    lang: {lang}\n    handler: ./fn\n    environment:\n      GREETING: salut\n    labels:\n      com.openfaas.scale.min: \"0\"\n");
    std::fs::write(dir.join("stack.yml"), stack).unwrap();
    p.cli(dir, &["deploy", "-f", "stack.yml"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = answer(&p);
        if answer["parent"] == want || std::time::Instant::now() > deadline {
            let logs = function_logs(&p, "fn");
            assert!(logs.contains("handler ran"), "{logs}");
            then(&p, &answer);
            return answer;
        }
        p.scale_to_zero("fn");
    }
}

/// The pid of the zygote serving a platform whose data directory is `data_dir`: a process
/// started with its `VIRGA_ZYGOTE` (as are the runtimes it forked), whose parent was not.
fn zygote_of(data_dir: &Path) -> Option<i32> {
    let marker = format!("VIRGA_ZYGOTE={}", data_dir.display());
    let marked = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
            env.split(|b| *b == 0)
                .any(|v| v.starts_with(marker.as_bytes()))
        })
    };
    let parent = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        (marked(pid) && !marked(parent(pid)?)).then_some(pid)
    })
}

/// `fn`'s answer as JSON.
fn answer(p: &Platform) -> serde_json::Value {
    let text = p.invoke("fn", "").text().unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn without_a_warm_pool_python_runtimes_are_forked_from_a_zygote() {
    // A second forked runtime draws other random numbers than the first. A zygote that
    // dies is replaced: the start that finds it dead goes without it, the next is forked.
    let second = |p: &Platform, first: &serde_json::Value| {
        p.scale_to_zero("fn");
        let again = answer(p);
        assert_eq!(again["parent"], "python3", "{again}");
        assert_ne!(again["random"], first["random"], "{again} after {first}");
        let zygote = zygote_of(&p.data_dir).expect("no zygote process");
        // SAFETY: kill(2) of the zygote this test's platform started.
        unsafe { libc::kill(zygote, libc::SIGKILL) };
        // (A dead process's environment reads empty.)
        let gone = || zygote_of(&p.data_dir) != Some(zygote);
        assert!(p.eventually(Duration::from_secs(10), gone));
        p.scale_to_zero("fn");
        assert_eq!(answer(p)["parent"], "virga-watchdog");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            p.scale_to_zero("fn");
            if answer(p)["parent"] == "python3" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no new zygote");
        }
    };
    let forked = runtime_parent("python3-http", "", &[], "python3", second);
    assert_eq!(forked["greeting"], "salut");
    assert_eq!(forked["parent"], "python3", "{forked}");
    assert_eq!(forked["own_pid"], true, "{forked}");
    let spawned = runtime_parent(
        "python3-http",
        "",
        &["--no-zygote"],
        "virga-watchdog",
        |_, _| {},
    );
    assert_eq!(spawned["greeting"], "salut");
    assert_eq!(spawned["parent"], "virga-watchdog", "{spawned}");
}

#[test]
fn without_a_warm_pool_node_runtimes_are_forked_from_a_zygote() {
    // A forked runtime that dies of an uncaught exception exits with node's code 1 and its
    // error in the logs; the next call gets a new runtime from the zygote, which draws other
    // random numbers than the first.
    let after_crash = |p: &Platform, first: &serde_json::Value| {
        let r = p.anon(Method::GET, "/function/fn?crash=1").send().unwrap();
        assert_eq!(r.status(), 200);
        let logs = || function_logs(p, "fn");
        assert!(
            p.eventually(Duration::from_secs(10), || logs().contains("Error: boom")),
            "{}",
            logs()
        );
        let again = answer(p);
        assert_eq!(again["parent"], "node", "{again}");
        assert_eq!(again["own_pid"], true, "{again}");
        assert_ne!(again["random"], first["random"], "{again} after {first}");
    };
    // A data directory too deep for a unix socket address: the zygote listens elsewhere.
    let deep = "a-data-directory-named-at-length-so-its-run-directory-cannot-hold-a-socket";
    let forked = runtime_parent("node20", deep, &[], "node", after_crash);
    assert_eq!(forked["greeting"], "salut");
    assert_eq!(forked["parent"], "node", "{forked}");
    assert_eq!(forked["own_pid"], true, "{forked}");
    let spawned = runtime_parent("node20", "", &["--no-zygote"], "virga-watchdog", |_, _| {});
    assert_eq!(spawned["greeting"], "salut");
    assert_eq!(spawned["parent"], "virga-watchdog", "{spawned}");
}

/// A `json.py` that shadows the standard library's for any runtime importing it from its
/// bundle: it runs the real module's code as its own and rewrites every JSON answer with the
/// secrets it can read.
const SHADOW_JSON: &str = r#"import os, sysconfig
__path__ = [os.path.join(sysconfig.get_paths()["stdlib"], "json")]
__package__ = "json"
exec(open(os.path.join(__path__[0], "__init__.py")).read())
_dumps = dumps
def dumps(obj, *args, **kwargs):
    stolen = {}
    d = "/var/openfaas/secrets"
    for n in (os.listdir(d) if os.path.isdir(d) else []):
        try:
            stolen[n] = open(os.path.join(d, n)).read()
        except OSError:
            pass
    return _dumps({"pwned": True, "stolen": stolen, "was": obj})
"#;

#[test]
fn pooled_sandboxes_never_run_another_functions_bundle() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let p = Platform::start_runc(data.path(), &["--warm-pool", "1"]);
    // `evil` is built (in a directory of its own) from a local copy of the python3-http
    // template with a json.py beside the runtime's entrypoint; `spy` reads what its pooled
    // sandbox's runtime directory holds.
    let evil_dir = work.path().join("evil-project");
    let template = evil_dir.join("template/python3-http");
    std::fs::create_dir_all(template.parent().unwrap()).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates/python3-http");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(&repo)
        .arg(&template)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::write(template.join("json.py"), SHADOW_JSON).unwrap();
    new_function(
        &p,
        &evil_dir,
        "evil",
        "python3-http",
        "handler.py",
        "def handle(event, context):\n    return {'body': {'who': 'evil'}}\n",
    );
    let labels = "    labels:\n      com.openfaas.scale.min: \"0\"\n";
    let stack = format!("provider:\n  name: openfaas\nfunctions:\n  evil:\n    lang: python3-http\n    handler: ./evil\n{labels}");
    std::fs::write(evil_dir.join("stack.yml"), stack).unwrap();
    p.cli(&evil_dir, &["deploy", "-f", "stack.yml"]);

    new_function(&p, dir, "victim", "python3-http", "handler.py", "def handle(event, context):\n    return {'body': {'who': 'victim', 'token': open('/var/openfaas/secrets/token').read()}}\n");
    new_function(&p, dir, "spy", "python3-http", "handler.py", "import os\n\ndef handle(event, context):\n    seen = {}\n    for root, _, files in os.walk('/virga/runtime'):\n        for f in files:\n            seen[os.path.join(root, f)] = open(os.path.join(root, f), errors='replace').read()[:200]\n    return {'body': {'who': 'spy', 'seen': seen}}\n");
    let stack = format!("provider:\n  name: openfaas\nfunctions:\n  victim:\n    lang: python3-http\n    handler: ./victim\n    secrets: [token]\n{labels}  spy:\n    lang: python3-http\n    handler: ./spy\n{labels}");
    std::fs::write(dir.join("stack.yml"), stack).unwrap();
    p.create_secret("token", "victim-secret");
    p.cli(dir, &["deploy", "-f", "stack.yml"]);
    let pool_full =
        || p.metric("virga_warm_pool_instances{function_name=\"python3-http-") == Some(1.0);
    let call = |name: &str| -> serde_json::Value {
        assert!(
            p.eventually(Duration::from_secs(30), pool_full),
            "pool did not refill"
        );
        let text = p.invoke(name, "").text().unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text}"))
    };

    // The victim takes a pooled sandbox; the one the pool starts next holds only the
    // template's runtime, none of the victim's code.
    assert_eq!(call("victim")["who"], "victim");
    let spy = call("spy");
    assert_eq!(spy["who"], "spy", "{spy}");
    let seen = spy["seen"].as_object().unwrap();
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        vec!["/virga/runtime/index.py"],
        "{spy}"
    );
    assert!(!spy.to_string().contains("victim"), "{spy}");

    // evil's module runs in evil's own runtime only (it starts from its own bundle) ...
    let evil = call("evil");
    assert_eq!(evil["pwned"], true, "{evil}");
    assert_eq!(warm_starts(&p, "evil"), None);
    // ... and never in the runtimes the pool hands to others.
    p.scale_to_zero("victim");
    let victim = call("victim");
    assert_eq!(
        victim,
        serde_json::json!({"who": "victim", "token": "victim-secret"})
    );
}

/// A handler that, called with `?attack=HOST,HOST`, tries to bind the sandboxes at those
/// addresses to its own code (`/virga/runtime`, where a pooled sandbox's runtime lives) and
/// says which binds were answered 200.
const HIJACKER: &str = r#"import http.client, json

def handle(event, context):
    if not event.query.get("attack"):
        return {"body": {"who": "hijacker"}}
    bound = []
    for host in event.query["attack"].split(","):
        try:
            c = http.client.HTTPConnection(host, 8080, timeout=0.3)
            c.request("POST", "/_/virga/bind", json.dumps({"dir": "/virga/runtime", "env": {}}), {"Content-Type": "application/json"})
            r = c.getresponse()
            if r.status == 200 and r.read() == b"bound\n":
                bound.append(host)
        except OSError:
            pass
    return {"body": {"who": "hijacker", "bound": bound}}
"#;

#[test]
fn functions_cannot_bind_pooled_sandboxes() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let p = Platform::start_runc(data.path(), &["--warm-pool", "2"]);
    new_function(&p, dir, "hijacker", "python3-http", "handler.py", HIJACKER);
    new_function(
        &p,
        dir,
        "third",
        "python3-http",
        "handler.py",
        "def handle(event, context):\n    return {'body': {'who': 'third'}}\n",
    );
    let stack = "provider:\n  name: openfaas\nfunctions:\n  hijacker:\n    lang: python3-http\n    handler: ./hijacker\n    labels:\n      com.openfaas.scale.min: \"0\"\n  third:\n    lang: python3-http\n    handler: ./third\n    labels:\n      com.openfaas.scale.min: \"0\"\n";
    std::fs::write(dir.join("stack.yml"), stack).unwrap();
    p.cli(dir, &["deploy", "-f", "stack.yml"]);
    let pool_full =
        || p.metric("virga_warm_pool_instances{function_name=\"python3-http-") == Some(2.0);
    assert!(p.eventually(Duration::from_secs(30), pool_full));
    assert_eq!(
        p.invoke("hijacker", "")
            .json::<serde_json::Value>()
            .unwrap()["who"],
        "hijacker"
    );
    assert!(p.eventually(Duration::from_secs(30), pool_full));
    let targets = own_sandbox_addresses(data.path()).join(",");
    assert!(targets.split(',').count() >= 3, "{targets}");
    let r = p
        .anon(Method::GET, &format!("/function/hijacker?attack={targets}"))
        .send()
        .unwrap();
    let attack: serde_json::Value = r.json().unwrap();
    assert_eq!(attack["bound"], serde_json::json!([]), "{attack}");
    for _ in 0..2 {
        let third: serde_json::Value = p.invoke("third", "").json().unwrap();
        assert_eq!(third, serde_json::json!({"who": "third"}));
        p.scale_to_zero("third");
    }
}

/// The addresses of every sandbox of the platform with data directory `data` (its network
/// slots are the files under /run/virga-net/slots whose first word is its key).
fn own_sandbox_addresses(data: &Path) -> Vec<String> {
    let key = std::fs::read_to_string(data.join("sandbox/key")).unwrap();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/run/virga-net/slots").unwrap().flatten() {
        let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
        if owner.split_whitespace().next() == Some(key.trim()) {
            let slot: u32 = e.file_name().to_str().unwrap().parse().unwrap();
            let ip = u32::from(std::net::Ipv4Addr::new(10, 88, 0, 0)) + slot * 4 + 2;
            out.push(std::net::Ipv4Addr::from(ip).to_string());
        }
    }
    out
}
