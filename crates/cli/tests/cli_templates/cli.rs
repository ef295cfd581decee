//! The `virga` CLI end to end against the real `virga up`: a stack.yml with one function of
//! each template is created with `virga new`, deployed with `virga deploy`, invoked with
//! `virga invoke`, listed, described and removed; secrets and login go through the CLI too.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use virga_testkit::{virga_bin, Platform, PASSWORD};

/// Run `virga ARGS` in `dir` against `p`, with `stdin` as input.
fn virga(p: &Platform, dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(virga_bin())
        .args(args)
        .current_dir(dir)
        .env("VIRGA_URL", &p.url)
        .env("VIRGA_CONFIG_DIR", dir.join(".config"))
        .env_remove("VIRGA_PASSWORD")
        .env_remove("OPENFAAS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run virga");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(p: &Platform, dir: &Path, args: &[&str], stdin: &str) -> String {
    let out = virga(p, dir, args, stdin);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "virga {args:?} failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn stack_deploy_invoke_list_remove_through_the_cli() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let p = Platform::start(data.path());

    // Without credentials the CLI says what to do.
    let out = virga(&p, dir, &["list"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("virga login"), "{err}");
    let out = virga(&p, dir, &["login", "--password-stdin"], "wrong\n");
    assert!(!out.status.success());
    ok(
        &p,
        dir,
        &["login", "--password-stdin"],
        &format!("{PASSWORD}\n"),
    );

    ok(&p, dir, &["new", "py", "--lang", "python3-http"], "");
    ok(&p, dir, &["new", "js", "--lang", "node20"], "");
    ok(&p, dir, &["new", "sh", "--lang", "bash"], "");
    // `virga new` writes stack.yaml, as faas-cli does; a plain OpenFaaS stack entry with an
    // environment and a secret goes into it.
    let mut stack = std::fs::read_to_string(dir.join("stack.yaml")).unwrap();
    stack.push_str(
        "  env:\n    fprocess: env\n    environment:\n      GREETING: ${GREETING:-hi}\n    secrets:\n      - token\n",
    );
    std::fs::write(dir.join("stack.yaml"), stack).unwrap();
    ok(
        &p,
        dir,
        &["secret", "create", "token", "--from-literal", "t0k"],
        "",
    );
    let secrets = ok(&p, dir, &["secret", "list"], "");
    assert!(
        secrets.contains("token") && !secrets.contains("t0k"),
        "{secrets}"
    );

    let out = ok(&p, dir, &["deploy"], "");
    for f in ["py", "js", "sh", "env"] {
        assert!(out.contains(&format!("Deployed {f}")), "{out}");
    }
    assert_eq!(
        ok(&p, dir, &["invoke", "py"], "ignored"),
        "Hello from Virga!"
    );
    let js: Value = serde_json::from_str(&ok(
        &p,
        dir,
        &["invoke", "js", "--content-type", "application/json"],
        r#"{"a":1}"#,
    ))
    .unwrap();
    assert_eq!(js["message"], "Hello from Virga!");
    assert_eq!(js["input"]["a"], 1);
    assert_eq!(
        ok(&p, dir, &["invoke", "sh"], "quiet please"),
        "QUIET PLEASE"
    );
    let env = ok(&p, dir, &["invoke", "env", "--method", "GET"], "");
    assert!(env.contains("GREETING=hi"), "{env}");

    // A second deploy reuses the uploaded bundles.
    let again = ok(
        &p,
        dir,
        &["deploy", "-f", "stack.yaml", "--filter", "py"],
        "",
    );
    assert!(again.contains("already on the gateway"), "{again}");

    let list: Vec<Value> = serde_json::from_str(&ok(&p, dir, &["list", "--json"], "")).unwrap();
    let mut names: Vec<&str> = list.iter().map(|f| f["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["env", "js", "py", "sh"]);
    let table = ok(&p, dir, &["list"], "");
    assert!(
        table.contains("Invocations") && table.contains("py"),
        "{table}"
    );
    let described = ok(&p, dir, &["describe", "py"], "");
    assert!(described.contains("virga.local/py@sha256:"), "{described}");

    ok(&p, dir, &["remove", "sh"], "");
    let out = virga(&p, dir, &["invoke", "sh"], "x");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    ok(
        &p,
        dir,
        &["remove", "-f", "stack.yaml", "--filter", "py"],
        "",
    );
    let list: Vec<Value> = serde_json::from_str(&ok(&p, dir, &["list", "--json"], "")).unwrap();
    assert_eq!(list.len(), 2);
    ok(&p, dir, &["secret", "remove", "token"], "");
}

#[test]
fn malformed_stack_files_name_the_problem() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let p = Platform::start(data.path());
    std::fs::write(
        work.path().join("stack.yml"),
        "provider:\n  name: openfaas\nfunctions:\n  f:\n    lang: [not, a, string\n",
    )
    .unwrap();
    let out = virga(&p, work.path(), &["deploy", "-f", "stack.yml"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stack.yml") && err.contains("line"), "{err}");
    std::fs::write(
        work.path().join("stack.yml"),
        "functions:\n  Bad_Name:\n    fprocess: cat\n",
    )
    .unwrap();
    let out = virga(&p, work.path(), &["deploy", "-f", "stack.yml"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Bad_Name"), "{err}");
}

/// Without `-f`, `virga new`, `build` and `deploy` use stack.yaml, else stack.yml, in
/// faas-cli's order.
#[test]
fn stack_yaml_is_the_default_stack_file_then_stack_yml() {
    let build = |dir: &Path| {
        let out = Command::new(virga_bin())
            .arg("build")
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let entry = |name: &str| {
        format!("provider:\n  name: openfaas\nfunctions:\n  {name}:\n    fprocess: cat\n")
    };
    let only_yml = tempfile::tempdir().unwrap();
    std::fs::write(only_yml.path().join("stack.yml"), entry("from-yml")).unwrap();
    assert!(build(only_yml.path()).contains("Skipping from-yml"));
    let both = tempfile::tempdir().unwrap();
    std::fs::write(both.path().join("stack.yml"), entry("from-yml")).unwrap();
    std::fs::write(both.path().join("stack.yaml"), entry("from-yaml")).unwrap();
    let out = build(both.path());
    assert!(
        out.contains("Skipping from-yaml") && !out.contains("from-yml"),
        "{out}"
    );
    let fresh = tempfile::tempdir().unwrap();
    let out = Command::new(virga_bin())
        .args(["new", "fn", "--lang", "bash"])
        .current_dir(fresh.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(fresh.path().join("stack.yaml").is_file());
    assert!(!fresh.path().join("stack.yml").exists());
}
