//! Registry images run as functions (issue 13): images built and pushed to a real
//! docker-registry are deployed through the real HTTP API of a real `virga up` with runc
//! sandboxes, and called through /function/NAME. Root and runc are needed (as for
//! `sandbox.rs`); the tests fail rather than skip without them.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use virga_oci::{Credentials, Platform as Arch, RunConfig};
use virga_testkit::registry::{busybox_tree, httpd, push, push_httpd, watchdog_tree, Registry};
use virga_testkit::Platform;

/// The virga-watchdog as the image's entrypoint (classic mode: `fprocess` per request), as
/// user `app` of the image's /etc/passwd, in /srv/work, with the image's own variables.
fn watchdog_config() -> RunConfig {
    RunConfig {
        entrypoint: Some(vec!["/usr/bin/fwatchdog".into()]),
        env: vec![
            "PATH=/bin:/usr/bin".into(),
            "bind_address=0.0.0.0".into(),
            "GREETING=from the image".into(),
        ],
        user: Some("app".into()),
        working_dir: Some("/srv/work".into()),
        ..RunConfig::default()
    }
}

fn deploy(p: &Platform, body: Value) -> virga_testkit::Answer {
    p.send_json(Method::POST, "/system/functions", body)
}

/// GET /function/NAME (busybox httpd serves GET only).
fn call(p: &Platform, name: &str) -> (u16, String) {
    let r = p
        .anon(Method::GET, &format!("/function/{name}"))
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// Run the `virga` CLI against `p`; its stdout (it must succeed).
fn virga(p: &Platform, args: &[&str]) -> String {
    let out = std::process::Command::new(virga_testkit::virga_bin())
        .args(args)
        .env("VIRGA_URL", &p.url)
        .env("VIRGA_PASSWORD", virga_testkit::PASSWORD)
        .env("VIRGA_CONFIG_DIR", p.data_dir.join("cli-config"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "virga {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn get(p: &Platform, path: &str) -> (u16, String) {
    let r = p.sys(Method::GET, path).send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn an_image_with_no_virga_component_runs_pinned_and_scales_to_zero_and_back() {
    let reg = Registry::start(None);
    let digest = push_httpd(&reg, "web:1", "hello from busybox\n", None);
    let dir = tempfile::tempdir().unwrap();
    let mut p = Platform::start_runc(dir.path(), &[]);
    let r = deploy(&p, json!({"service": "web", "image": reg.image("web:1")}));
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(call(&p, "web"), (200, "hello from busybox\n".into()));

    // Described as deployed, with the digest it is pinned to.
    let f = p.get_json("/system/function/web");
    assert_eq!(f["image"], reg.image("web:1"));
    assert_eq!(f["imageDigest"], digest.as_str());
    assert_eq!(f["pinnedImage"], format!("{}/web@{digest}", reg.host));

    // Scale to zero and back: the next call starts an instance on the cached image.
    let r = p.send_json(
        Method::POST,
        "/system/scale-function/web",
        json!({"serviceName": "web", "replicas": 0}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(p.eventually(Duration::from_secs(10), || p
        .get_json("/system/function/web")["availableReplicas"]
        == 0));
    assert_eq!(call(&p, "web"), (200, "hello from busybox\n".into()));

    // Its output (httpd -v: one line per request; the readiness probe's /_/health is a 404
    // here, so the open port made it ready) is the function's log; its calls are counted.
    assert!(p.eventually(Duration::from_secs(5), || {
        let (_, logs) = get(&p, "/system/logs?name=web");
        logs.contains("response:404") && logs.contains("response:200")
    }));
    let metrics = p
        .anon(Method::GET, "/metrics")
        .send()
        .unwrap()
        .text()
        .unwrap();
    let counted =
        "gateway_function_invocation_total{function_name=\"web.openfaas-fn\",code=\"200\"} 2";
    assert!(metrics.contains(counted), "{metrics}");

    // A layer lost while the platform was down (as if its unpack never finished) is pulled
    // again at the next start.
    p.kill9();
    let layers = dir.path().join("images/layers");
    for layer in std::fs::read_dir(&layers).unwrap().flatten() {
        std::fs::remove_dir_all(layer.path()).unwrap();
    }
    p.restart();
    assert_eq!(call(&p, "web"), (200, "hello from busybox\n".into()));
    assert_eq!(std::fs::read_dir(&layers).unwrap().count(), 1);

    // Stopped (SIGTERM; not dropped: the harness's drop unmounts leftovers itself), the
    // platform leaves no image root mounted and no sandbox behind.
    let status = p.terminate();
    assert!(status.success(), "{status}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let data = dir.path().to_string_lossy().into_owned();
    assert!(!mounts.contains(&data), "{mounts}");
    assert_eq!(
        virga_testkit::sandbox_leftovers(dir.path()),
        Vec::<String>::new()
    );
}

#[test]
fn an_image_running_its_own_watchdog_honours_its_config_env_process_and_secrets() {
    let reg = Registry::start(None);
    let (base, wd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    busybox_tree(base.path(), "");
    watchdog_tree(wd.path());
    push(
        &[base.path(), wd.path()],
        watchdog_config(),
        Arch::host(),
        &reg.image("wd:1"),
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(dir.path(), &[]);
    p.create_secret("token", "s3cret");
    let fprocess = "sh -c 'id -u; id -g; pwd; echo $GREETING; echo $EXTRA; \
                    cat /var/openfaas/secrets/token; echo'";
    let r = deploy(
        &p,
        json!({"service": "who", "image": reg.image("wd:1"), "envProcess": fprocess,
               "envVars": {"EXTRA": "from envVars"}, "secrets": ["token"]}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let (status, text) = call(&p, "who");
    assert_eq!(status, 200, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "1234",
            "1234",
            "/srv/work",
            "from the image",
            "from envVars",
            "s3cret"
        ]
    );
    // Async calls reach image functions too, through the durable queue.
    let r = p
        .anon(Method::POST, "/async-function/who")
        .body("later")
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    let ok = r#"gateway_function_invocation_total{function_name="who.openfaas-fn",code="200"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while p.metric(ok) != Some(2.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the async call was not delivered: {:?}",
            p.metric(ok)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn read_only_roots_refuse_writes_and_writable_ones_keep_them_per_instance() {
    let reg = Registry::start(None);
    let (base, wd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    busybox_tree(base.path(), "");
    watchdog_tree(wd.path());
    // As root (without capabilities, as every sandbox): the image's directories are root's.
    let config = RunConfig {
        user: None,
        ..watchdog_config()
    };
    push(
        &[base.path(), wd.path()],
        config,
        Arch::host(),
        &reg.image("wd:1"),
        None,
    );
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(dir.path(), &[]);
    let fprocess = "sh -c 'if [ -e /var/data/mark ]; then echo seen; \
                    elif touch /var/data/mark 2>/dev/null; then echo fresh; else echo refused; fi'";
    for (name, read_only) in [("ro", true), ("rw", false)] {
        let r = deploy(
            &p,
            json!({"service": name, "image": reg.image("wd:1"), "envProcess": fprocess,
                   "readOnlyRootFilesystem": read_only}),
        );
        assert_eq!(r.status, 202, "{}", r.text);
    }
    assert_eq!(call(&p, "ro"), (200, "refused\n".into()));
    assert_eq!(call(&p, "rw"), (200, "fresh\n".into()));
    assert_eq!(call(&p, "rw"), (200, "seen\n".into()));
    // The next instance has a root of its own: the last one's write is gone with it.
    let r = p.send_json(
        Method::POST,
        "/system/scale-function/rw",
        json!({"serviceName": "rw", "replicas": 0}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(p.eventually(Duration::from_secs(10), || p
        .get_json("/system/function/rw")["availableReplicas"]
        == 0));
    assert_eq!(call(&p, "rw"), (200, "fresh\n".into()));
    // Nothing of the image changed on the host.
    let layers = dir.path().join("images/layers");
    for layer in std::fs::read_dir(layers).unwrap().flatten() {
        assert!(!layer.path().join("rootfs/var/data/mark").exists());
    }
}

#[test]
fn bad_references_registries_and_credentials_get_clear_errors_and_a_put_follows_the_tag() {
    let creds = Credentials {
        username: "ada".into(),
        password: "pa55word".into(),
    };
    let private = Registry::start(Some(creds.clone()));
    let mut public = Registry::start(None);
    push_httpd(&public, "web:1", "one\n", None);
    push_httpd(&private, "secret:1", "private\n", Some(&creds));
    let tree = tempfile::tempdir().unwrap();
    busybox_tree(tree.path(), "");
    let arm = Arch {
        os: "linux".into(),
        architecture: "arm64".into(),
    };
    push(&[tree.path()], httpd(), arm, &public.image("arm:1"), None);
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(dir.path(), &[]);

    let refused = |body: Value, status: u16, needles: &[&str]| {
        let r = deploy(&p, body.clone());
        assert_eq!(r.status, status, "{body}: {}", r.text);
        for n in needles {
            assert!(r.text.contains(n), "{body}: {n:?} not in {}", r.text);
        }
    };
    let missing = public.image("nothing:1");
    refused(json!({"service": "a", "image": missing}), 404, &[&missing]);
    let tag = public.image("web:2");
    refused(json!({"service": "a", "image": tag}), 404, &[&tag]);
    refused(
        json!({"service": "a", "image": public.image("arm:1")}),
        400,
        &["linux/arm64"],
    );
    let secret = private.image("secret:1");
    refused(
        json!({"service": "a", "image": secret}),
        401,
        &[&private.host],
    );
    let wrong = Credentials {
        username: "ada".into(),
        password: "nope".into(),
    };
    refused(
        json!({"service": "a", "image": secret, "registryAuth": wrong.to_base64()}),
        401,
        &[&private.host],
    );
    refused(
        json!({"service": "a", "image": secret, "registryAuth": "%%%"}),
        400,
        &["registryAuth"],
    );

    // Right credentials in registryAuth: pulled, and never shown.
    let r = deploy(
        &p,
        json!({"service": "private", "image": secret, "registryAuth": creds.to_base64()}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(call(&p, "private"), (200, "private\n".into()));
    let (_, described) = get(&p, "/system/function/private");
    assert!(!described.contains(&creds.to_base64()), "{described}");
    assert!(!described.contains("registryAuth"), "{described}");
    let db = std::fs::read(dir.path().join("state.redb")).unwrap();
    let b64 = creds.to_base64();
    assert!(!db.windows(b64.len()).any(|w| w == b64.as_bytes()));

    // Credentials from the data directory's config.json (as `docker login` writes it).
    let mut config = virga_oci::RegistryConfig::default();
    config.set(&private.host, &creds);
    config
        .save(&dir.path().join("registry/config.json"))
        .unwrap();
    let r = deploy(&p, json!({"service": "private2", "image": secret}));
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(call(&p, "private2"), (200, "private\n".into()));

    // A PUT resolves the tag again: it moved.
    let r = deploy(
        &p,
        json!({"service": "web", "image": public.image("web:1")}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(call(&p, "web"), (200, "one\n".into()));
    let first = p.get_json("/system/function/web")["imageDigest"].clone();
    let moved = push_httpd(&public, "web:1", "two\n", None);
    let r = p.send_json(
        Method::PUT,
        "/system/functions",
        json!({"service": "web", "image": public.image("web:1")}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(call(&p, "web"), (200, "two\n".into()));
    let now = p.get_json("/system/function/web")["imageDigest"].clone();
    assert_eq!(now, moved.as_str());
    assert_ne!(now, first);

    // The registry goes down: a deploy names it (5xx), the running function keeps serving.
    public.stop();
    refused(
        json!({"service": "b", "image": public.image("web:1")}),
        502,
        &[&public.host],
    );
    assert_eq!(call(&p, "web"), (200, "two\n".into()));
    // An update whose pull fails leaves the running definition, and its status and log say
    // why.
    let r = p.send_json(
        Method::PUT,
        "/system/functions",
        json!({"service": "web", "image": public.image("web:3")}),
    );
    assert_eq!(r.status, 502, "{}", r.text);
    assert_eq!(call(&p, "web"), (200, "two\n".into()));
    let status = p.get_json("/system/function/web");
    let pull = &status["imagePull"];
    assert_eq!(pull["state"], "failed", "{status}");
    assert!(
        pull["error"].as_str().unwrap().contains(&public.host),
        "{status}"
    );
    let (code, logs) = get(&p, "/system/logs?name=web");
    assert_eq!(code, 200);
    assert!(
        logs.contains("pulling image") && logs.contains("failed"),
        "{logs}"
    );
}

#[test]
fn the_images_route_lists_sizes_and_users_and_prune_removes_only_the_unused() {
    let reg = Registry::start(None);
    let kept = push_httpd(&reg, "kept:1", "kept\n", None);
    let gone = push_httpd(&reg, "gone:1", "gone\n", None);
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(dir.path(), &[]);
    for (name, tag) in [("kept", "kept:1"), ("gone", "gone:1")] {
        let r = deploy(&p, json!({"service": name, "image": reg.image(tag)}));
        assert_eq!(r.status, 202, "{}", r.text);
    }
    let r = p.send_json(
        Method::DELETE,
        "/system/functions",
        json!({"functionName": "gone"}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let listed = p.get_json("/system/virga/images");
    let entry = |d: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["digest"] == d)
            .cloned()
            .unwrap_or_else(|| panic!("{d} not in {listed}"))
    };
    let k = entry(&kept);
    assert_eq!(k["functions"], json!(["kept"]));
    assert!(k["size"].as_u64().unwrap() > 100_000, "{k}");
    assert!(k["unpackedSize"].as_u64().unwrap() > 1_000_000, "{k}");
    assert_eq!(entry(&gone)["functions"], json!([]));

    // The CLI shows the same: a table of images with their functions, the pin in describe.
    let table = virga(&p, &["images"]);
    let row = |r: &str| table.lines().find(|l| l.contains(r)).map(str::to_string);
    let kept_row = row(&reg.image("kept:1")).unwrap_or_else(|| panic!("{table}"));
    assert!(kept_row.trim_end().ends_with("kept"), "{table}");
    assert!(row(&reg.image("gone:1")).is_some(), "{table}");
    let described = virga(&p, &["describe", "kept"]);
    assert!(
        described.contains(&format!("Image digest:       {kept}")),
        "{described}"
    );

    let pruned = virga(&p, &["images", "prune", "--json"]);
    let pruned: Value = serde_json::from_str(&pruned).unwrap();
    assert_eq!(pruned["images"], 1, "{pruned}");
    assert!(pruned["bytes"].as_u64().unwrap() > 100_000, "{pruned}");
    let left: Vec<Value> = p
        .get_json("/system/virga/images")
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["digest"], kept.as_str());
    assert_eq!(call(&p, "kept"), (200, "kept\n".into()));
    // Behind auth, as every /system route.
    let r = p.anon(Method::GET, "/system/virga/images").send().unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn without_runc_an_image_deploy_says_runc_is_needed() {
    let reg = Registry::start(None);
    push_httpd(&reg, "web:1", "x\n", None);
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_with(dir.path(), &["--isolation", "process"]);
    let r = deploy(&p, json!({"service": "web", "image": reg.image("web:1")}));
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("runc"), "{}", r.text);
}

#[test]
fn a_hanging_registry_holds_up_only_its_own_deploy() {
    // A "registry" that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in silent.incoming().take(8) {
            conns.push(c);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(dir.path(), &[]);
    let url = p.url.clone();
    let image = format!("{host}/stuck:1");
    std::thread::spawn(move || {
        let _ = reqwest::blocking::Client::new()
            .post(format!("{url}/system/functions"))
            .basic_auth("admin", Some(virga_testkit::PASSWORD))
            .json(&json!({"service": "stuck", "image": image}))
            .send();
    });
    // Let the stuck deploy reach its pull first.
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let r = deploy(
        &p,
        json!({"service": "quick", "image": "", "envProcess": "cat"}),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a deploy waited {:?} for another function's pull",
        started.elapsed()
    );
    let status = p.get_json("/system/function/quick");
    assert_eq!(status["name"], "quick");
    // And the stuck deploy does not keep the platform from stopping.
    let stopping = std::time::Instant::now();
    drop(p);
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "SIGTERM took {:?} with a deploy stuck in its pull",
        stopping.elapsed()
    );
}
