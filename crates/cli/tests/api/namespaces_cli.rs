//! Namespaces through the real `virga` CLI against the real `virga up`: `virga namespace`
//! create, get, update, list and remove (refused while non-empty, then --cascade), a stack
//! file's `namespace:` and `-n` on deploy, list, describe, invoke, logs, secret, scale and
//! remove, `$OPENFAAS_NS` after both, and the gateway's messages for bad names.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use virga_testkit::{script, virga_bin, Platform, PASSWORD};

/// Run `virga ARGS` in `dir` against `p` with `stdin` as input and `env` added.
fn virga(p: &Platform, dir: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Output {
    let mut child = Command::new(virga_bin())
        .args(args)
        .current_dir(dir)
        .env("VIRGA_URL", &p.url)
        .env("VIRGA_PASSWORD", PASSWORD)
        .env("VIRGA_CONFIG_DIR", dir.join(".config"))
        .env_remove("OPENFAAS_URL")
        .env_remove("OPENFAAS_NS")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run virga");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

/// `virga ARGS`, which must succeed; its stdout.
fn ok(p: &Platform, dir: &Path, args: &[&str]) -> String {
    let out = virga(p, dir, args, "", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "virga {args:?} failed:\n{stdout}{stderr}"
    );
    stdout
}

/// `virga ARGS`, which must fail; its stderr.
fn fails(p: &Platform, dir: &Path, args: &[&str]) -> String {
    let out = virga(p, dir, args, "", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "virga {args:?} succeeded:\n{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Function names `virga list [-n NS] --json` shows.
fn names(p: &Platform, dir: &Path, ns: &[&str]) -> Vec<String> {
    let mut args = vec!["list", "--json"];
    args.extend_from_slice(ns);
    let list = json(&ok(p, dir, &args));
    let list = list.as_array().unwrap();
    list.iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

/// A stack file with `echo` (answers `out-BODY`, logs `log-BODY`) in namespace `ns`.
fn write_stack(dir: &Path, ns: &str) {
    let echo = script(
        dir,
        "echo.sh",
        r#"read x; echo "out-$x"; echo "log-$x" >&2"#,
    );
    let ns = if ns.is_empty() {
        String::new()
    } else {
        format!("    namespace: {ns}\n")
    };
    let stack =
        format!("provider:\n  name: openfaas\nfunctions:\n  echo:\n    fprocess: {echo}\n{ns}");
    std::fs::write(dir.join("stack.yml"), stack).unwrap();
}

#[test]
fn namespace_commands_create_get_update_and_list() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (p, dir) = (Platform::start(data.path()), work.path());
    let out = ok(
        &p,
        dir,
        &["namespace", "create", "team-a", "--label", "team=a"],
    );
    assert!(out.contains("Created namespace team-a"), "{out}");
    let list = ok(&p, dir, &["namespace", "list"]);
    assert!(
        list.contains("openfaas-fn") && list.contains("team-a"),
        "{list}"
    );
    let list = json(&ok(&p, dir, &["namespace", "ls", "--json"]));
    assert_eq!(list, serde_json::json!(["openfaas-fn", "team-a"]));

    let get = ok(&p, dir, &["namespace", "get", "team-a"]);
    assert!(get.contains("team-a") && get.contains("team=a"), "{get}");
    // update replaces labels and annotations with those given, as faas-cli's does.
    ok(
        &p,
        dir,
        &[
            "namespace",
            "update",
            "team-a",
            "--annotation",
            "virga.quota.functions=3",
        ],
    );
    let got = json(&ok(&p, dir, &["namespace", "get", "team-a", "--json"]));
    assert_eq!(got["name"], "team-a");
    assert_eq!(got["annotations"]["virga.quota.functions"], "3");
    assert!(
        got.get("labels")
            .is_none_or(|l| l.as_object().unwrap().is_empty()),
        "{got}"
    );

    // Bad input: the gateway's own message, and a non-zero exit.
    let err = fails(&p, dir, &["namespace", "create", "Bad_Name"]);
    assert!(
        err.contains("400") && err.contains("not a valid name"),
        "{err}"
    );
    let err = fails(&p, dir, &["namespace", "create", "kube-system"]);
    assert!(err.contains("reserved"), "{err}");
    let err = fails(&p, dir, &["namespace", "create", "team-a"]);
    assert!(
        err.contains("409") && err.contains("already exists"),
        "{err}"
    );
    let err = fails(&p, dir, &["namespace", "get", "ghost"]);
    assert!(err.contains("404") && err.contains("ghost"), "{err}");
    let err = fails(
        &p,
        dir,
        &["namespace", "update", "team-a", "--label", "nope"],
    );
    assert!(err.contains("KEY=VALUE"), "{err}");
    let err = fails(&p, dir, &["list", "-n", "ghost"]);
    assert!(err.contains("namespace \"ghost\" not found"), "{err}");
    let got = json(&ok(&p, dir, &["namespace", "get", "team-a", "--json"]));
    assert_eq!(got["annotations"]["virga.quota.functions"], "3", "{got}");
}

#[test]
fn functions_secrets_and_logs_follow_the_namespace() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (p, dir) = (Platform::start(data.path()), work.path());
    ok(&p, dir, &["namespace", "create", "team-a"]);
    write_stack(dir, "team-a");
    let out = ok(&p, dir, &["deploy", "-f", "stack.yml"]);
    assert!(out.contains("/function/echo.team-a"), "{out}");

    // Listed in team-a only.
    assert!(names(&p, dir, &[]).is_empty());
    assert_eq!(names(&p, dir, &["-n", "team-a"]), ["echo"]);
    let table = ok(&p, dir, &["list", "-n", "team-a"]);
    assert!(
        table.lines().nth(1).unwrap_or("").starts_with("echo "),
        "{table}"
    );
    let listed = json(&ok(&p, dir, &["list", "-n", "team-a", "--json"]));
    assert_eq!(listed[0]["namespace"], "team-a");

    calls_follow_the_namespace(&p, dir);
    secrets_stay_in_their_namespace(&p, dir);

    // remove -f takes each function's namespace:, remove -n the one named.
    let out = ok(&p, dir, &["remove", "-f", "stack.yml"]);
    assert!(out.contains("Removed echo.team-a"), "{out}");
    assert!(names(&p, dir, &["-n", "team-a"]).is_empty());
    ok(&p, dir, &["deploy", "-f", "stack.yml"]);
    fails(&p, dir, &["remove", "echo"]);
    ok(&p, dir, &["remove", "echo", "-n", "team-a"]);
    assert!(names(&p, dir, &["-n", "team-a"]).is_empty());

    // A namespace that still holds a function and a secret is kept, unless --cascade.
    ok(&p, dir, &["deploy", "-f", "stack.yml"]);
    ok(
        &p,
        dir,
        &[
            "secret",
            "create",
            "left",
            "--from-literal",
            "x",
            "-n",
            "team-a",
        ],
    );
    let err = fails(&p, dir, &["namespace", "remove", "team-a"]);
    assert!(err.contains("409") && err.contains("--cascade"), "{err}");
    assert_eq!(names(&p, dir, &["-n", "team-a"]), ["echo"]);
    let out = ok(&p, dir, &["namespace", "rm", "team-a", "--cascade"]);
    assert!(out.contains("Removed namespace team-a"), "{out}");
    let list = json(&ok(&p, dir, &["namespace", "list", "--json"]));
    assert_eq!(list, serde_json::json!(["openfaas-fn", "other"]));
    assert_eq!(p.invoke("echo.team-a", "x\n").status(), 404);
    // Created again, it is empty.
    ok(&p, dir, &["namespace", "create", "team-a"]);
    assert!(names(&p, dir, &["-n", "team-a"]).is_empty());
    let left = ok(&p, dir, &["secret", "list", "-n", "team-a"]);
    assert!(!left.contains("left"), "{left}");
}

/// `invoke` (also `--async`), `describe`, `logs`, `dead-letters list` and `scale` with `-n
/// team-a` reach team-a's `echo`; without `-n` they look in the default namespace, where it is
/// unknown.
fn calls_follow_the_namespace(p: &Platform, dir: &Path) {
    // Invoked and described as echo.team-a; in the default namespace it is unknown.
    let call = virga(p, dir, &["invoke", "echo", "-n", "team-a"], "hi\n", &[]);
    assert!(call.status.success(), "{call:?}");
    assert_eq!(String::from_utf8_lossy(&call.stdout), "out-hi\n");
    let out = virga(p, dir, &["invoke", "echo"], "hi\n", &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404"),
        "{out:?}"
    );
    let desc = ok(p, dir, &["describe", "echo", "-n", "team-a"]);
    assert!(desc.contains("/function/echo.team-a"), "{desc}");
    assert!(
        desc.lines()
            .any(|l| l.starts_with("Namespace:") && l.ends_with("team-a")),
        "{desc}"
    );
    fails(p, dir, &["describe", "echo"]);

    let logged = p.eventually(Duration::from_secs(10), || {
        ok(p, dir, &["logs", "echo", "-n", "team-a"]).contains("log-hi")
    });
    assert!(logged, "no log line in team-a");
    fails(p, dir, &["logs", "echo"]);

    ok(
        p,
        dir,
        &["scale", "echo", "-n", "team-a", "--replicas", "2"],
    );
    let f = p.get_json("/system/function/echo?namespace=team-a");
    assert_eq!(f["replicas"], 2, "{f}");
    fails(p, dir, &["scale", "echo", "--replicas", "2"]);

    // --async queues /async-function/echo.team-a, and the call runs there.
    let queued = virga(
        p,
        dir,
        &["invoke", "echo", "-n", "team-a", "--async"],
        "later\n",
        &[],
    );
    assert!(queued.status.success(), "{queued:?}");
    assert!(!String::from_utf8_lossy(&queued.stdout).trim().is_empty());
    let ran = p.eventually(Duration::from_secs(10), || {
        ok(p, dir, &["logs", "echo", "-n", "team-a"]).contains("log-later")
    });
    assert!(ran, "the async call did not run in team-a");
    let dead = json(&ok(
        p,
        dir,
        &["dead-letters", "list", "-n", "team-a", "--json"],
    ));
    assert_eq!(dead, serde_json::json!([]));
    let err = fails(p, dir, &["dead-letters", "list", "-n", "ghost"]);
    assert!(err.contains("namespace \"ghost\" not found"), "{err}");
}

/// `secret create|list|remove -n`: a secret of team-a and one of the same name in the default
/// namespace are two; removing it in another namespace touches neither.
fn secrets_stay_in_their_namespace(p: &Platform, dir: &Path) {
    let secrets = |ns: &[&str]| {
        let mut args = vec!["secret", "list", "--json"];
        args.extend_from_slice(ns);
        let list = json(&ok(p, dir, &args));
        let list = list.as_array().unwrap();
        list.iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    ok(
        p,
        dir,
        &[
            "secret",
            "create",
            "tok",
            "--from-literal",
            "a",
            "-n",
            "team-a",
        ],
    );
    assert!(secrets(&[]).is_empty());
    ok(p, dir, &["secret", "create", "tok", "--from-literal", "b"]);
    assert_eq!(secrets(&["-n", "team-a"]), ["tok"]);
    let table = ok(p, dir, &["secret", "list", "-n", "team-a"]);
    assert!(table.contains("tok"), "{table}");
    ok(
        p,
        dir,
        &[
            "secret",
            "update",
            "tok",
            "--from-literal",
            "c",
            "-n",
            "team-a",
        ],
    );

    // The bug faas-cli users hit: removing in another namespace deleted the default's.
    ok(p, dir, &["namespace", "create", "other"]);
    let err = fails(p, dir, &["secret", "remove", "tok", "-n", "other"]);
    assert!(err.contains("404") && err.contains("other"), "{err}");
    let err = fails(p, dir, &["secret", "remove", "tok", "-n", "ghost"]);
    assert!(err.contains("namespace \"ghost\" not found"), "{err}");
    assert_eq!(secrets(&[]), ["tok"]);
    assert_eq!(secrets(&["-n", "team-a"]), ["tok"]);

    let out = ok(p, dir, &["secret", "remove", "tok", "-n", "team-a"]);
    assert!(
        out.contains("Removed secret tok in namespace team-a"),
        "{out}"
    );
    assert!(secrets(&["-n", "team-a"]).is_empty());
    assert_eq!(secrets(&[]), ["tok"]);
}

#[test]
fn deploy_takes_the_flag_then_the_stack_then_openfaas_ns() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (p, dir) = (Platform::start(data.path()), work.path());
    for ns in ["team-a", "team-b"] {
        ok(&p, dir, &["namespace", "create", ns]);
    }
    write_stack(dir, "team-a");
    // -n wins over the stack's namespace:.
    let out = ok(&p, dir, &["deploy", "-f", "stack.yml", "-n", "team-b"]);
    assert!(out.contains("Deployed echo.team-b"), "{out}");
    assert_eq!(names(&p, dir, &["-n", "team-b"]), ["echo"]);
    assert!(names(&p, dir, &["-n", "team-a"]).is_empty());
    ok(&p, dir, &["remove", "echo", "-n", "team-b"]);

    // The stack's namespace: wins over $OPENFAAS_NS.
    let env = [("OPENFAAS_NS", "team-b")];
    let out = virga(&p, dir, &["deploy", "-f", "stack.yml"], "", &env);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(names(&p, dir, &["-n", "team-a"]), ["echo"]);
    assert!(names(&p, dir, &["-n", "team-b"]).is_empty());

    // $OPENFAAS_NS is the default of commands without a stack, and of functions without a
    // namespace:.
    write_stack(dir, "");
    let out = virga(&p, dir, &["deploy", "-f", "stack.yml"], "", &env);
    assert!(out.status.success(), "{out:?}");
    let out = virga(&p, dir, &["list", "--json"], "", &env);
    let listed = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(listed[0]["namespace"], "team-b", "{listed}");
    assert!(names(&p, dir, &[]).is_empty());

    // A namespace that does not exist fails the deploy with the gateway's message.
    write_stack(dir, "team-c");
    let err = fails(&p, dir, &["deploy", "-f", "stack.yml"]);
    assert!(err.contains("namespace \"team-c\" not found"), "{err}");
    write_stack(dir, "Team_C");
    let err = fails(&p, dir, &["deploy", "-f", "stack.yml"]);
    assert!(err.contains("not a valid name"), "{err}");
}
