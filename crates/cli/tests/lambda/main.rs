//! The Lambda templates end to end: functions made with `virga new --lang python3-lambda` (the
//! real awslambdaric from PyPI) and `--lang node-lambda`, built with `virga build`, deployed
//! with `virga deploy` to the real `virga up`, and called over HTTP through the gateway's
//! `/function/NAME` (function-URL events) and with boto3's Invoke. pip runs once per test binary: the first test
//! builds the shared stack, the others copy it (with `build/.deps`, which `virga deploy`
//! reuses) into their own directory.

mod node;
mod python;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use virga_testkit::Platform;

/// The shared stack: `pyfn` (python3-lambda) and `nodefn` (node-lambda) with the handlers
/// below, built once by `virga build`; and the image `virga build` made of pyfn.
fn built_stack() -> &'static (PathBuf, String) {
    static BUILT: OnceLock<(PathBuf, String)> = OnceLock::new();
    BUILT.get_or_init(|| {
        // A fixed place under target/, cleared first: one per test binary run, nothing left
        // in /tmp by the static.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lambda-stack");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::create_dir_all(&dir).unwrap();
        let cli = |args: &[&str]| virga_testkit::cli(&dir, &[], args);
        cli(&["new", "pyfn", "--lang", "python3-lambda"]);
        std::fs::write(dir.join("pyfn/handler.py"), python::HANDLER).unwrap();
        cli(&["new", "nodefn", "--lang", "node-lambda"]);
        std::fs::write(dir.join("nodefn/handler.js"), node::HANDLER).unwrap();
        let out = cli(&["build"]);
        assert!(
            out.contains("Successfully installed awslambdaric-4.2.2"),
            "{out}"
        );
        assert!(out.contains("virga.local/pyfn@sha256:"), "{out}");
        assert!(out.contains("virga.local/nodefn@sha256:"), "{out}");
        assert_compiled(&dir);
        (dir, pyfn_image(&out))
    })
}

/// The `virga.local/pyfn@sha256:...` a build printed.
fn pyfn_image(out: &str) -> String {
    let at = out.find("virga.local/pyfn@sha256:").expect("pyfn built");
    out[at..].split_whitespace().next().unwrap().to_string()
}

/// awslambdaric is byte-compiled into pyfn's bundle (a runtime in a read-only bundle would
/// compile it at every cold start).
fn assert_compiled(dir: &Path) {
    let cache = dir.join("build/pyfn/python/awslambdaric/__pycache__");
    let pyc = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
    assert!(pyc >= 5, "{} holds {pyc} files", cache.display());
}

/// A private copy of the built stack, with `extra` appended to function `name`'s entry
/// in stack.yaml (indented by four spaces, e.g. `environment:\n  A: b\n`).
fn stack_copy(name: &str, extra: &str) -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", built_stack().0.display()))
        .arg(work.path())
        .status()
        .unwrap();
    assert!(status.success());
    if !extra.is_empty() {
        let path = work.path().join("stack.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let entry = format!("  {name}:\n");
        let at = text.find(&entry).expect("function in stack.yaml") + entry.len();
        let indented: String = extra.lines().map(|l| format!("    {l}\n")).collect();
        let text = format!("{}{indented}{}", &text[..at], &text[at..]);
        std::fs::write(&path, text).unwrap();
    }
    work
}

/// `virga deploy --filter NAME` of `dir`'s stack to `p`; pip is not run again.
fn deploy(p: &Platform, dir: &Path, name: &str) {
    let out = p.cli(dir, &["deploy", "--filter", name]);
    assert!(out.contains(&format!("Deployed {name}")), "{out}");
    if name == "pyfn" {
        assert!(
            out.contains("pip: requirements unchanged, reusing"),
            "{out}"
        );
        assert_compiled(dir);
        // The reused install makes the very bundle the first build made.
        assert_eq!(pyfn_image(&out), built_stack().1);
    }
}

/// A gateway URL of function `name`: `/function/NAME` then `rest`.
fn url(p: &Platform, name: &str, rest: &str) -> String {
    format!("{}/function/{name}{rest}", p.url)
}

/// The JSON body of `r`, after checking its status.
fn json(r: reqwest::blocking::Response, status: u16) -> serde_json::Value {
    let got = r.status().as_u16();
    let text = r.text().unwrap();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Deploy `name` from a copy of the built stack with a `_HANDLER` naming a module that does
/// not exist: the first call through `/function/NAME{path}` gets Lambda's init error at once
/// (a 502 with `Runtime.ImportModuleError` naming the module), not a wait for readiness (the
/// platform's ready timeout is cut to 10 s, so a wait would show as a 503).
fn assert_init_error_names_the_missing_module(name: &str, path: &str) {
    let work = stack_copy(name, "environment:\n  _HANDLER: missing.handler\n");
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start_with(data.path(), &["--ready-timeout", "10"]);
    deploy(&p, work.path(), name);
    let r = p.http.get(url(&p, name, path)).send().unwrap();
    let err = json(r, 502);
    assert_eq!(err["errorType"], "Runtime.ImportModuleError", "{err}");
    assert!(
        err["errorMessage"].as_str().unwrap().contains("'missing'"),
        "{err}"
    );
}
