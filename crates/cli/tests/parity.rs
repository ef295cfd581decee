//! OpenFaaS parity found with the real faas-cli and templates: how commands are split, what
//! a command-only function's working directory looks like, and the errors a user meets.

mod common;

use common::Platform;

/// `fprocess` is split with the shell's quoting rules: `sh -c 'a; b'` runs both commands
/// (OpenFaaS's whitespace split would break it), and a value without quotes splits as before.
#[test]
fn fprocess_is_split_with_shell_quoting() {
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start(data.path());
    p.deploy_process("both", "sh -c 'echo a; echo b'", serde_json::json!({}));
    p.deploy_process("words", "echo one  two", serde_json::json!({}));
    p.deploy_process("quoted", r#"printf "%s|" "x y" z"#, serde_json::json!({}));
    assert_eq!(p.invoke("both", "").text().unwrap(), "a\nb\n");
    assert_eq!(p.invoke("words", "").text().unwrap(), "one two\n");
    assert_eq!(p.invoke("quoted", "").text().unwrap(), "x y|z|");
}

/// A command-only function (no bundle) runs in a readable, empty /home/app, and a program
/// that does not exist is reported as not found, in a sandbox as OpenFaaS images would.
#[test]
fn command_only_functions_get_a_readable_home_and_clear_errors() {
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(data.path(), &[]);
    p.deploy_process("where", "sh -c 'pwd; ls -a .'", serde_json::json!({}));
    p.deploy_process("missing", "no-such-program --flag", serde_json::json!({}));
    let r = p.invoke("where", "");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "/home/app\n.\n..\n");
    let r = p.invoke("missing", "");
    assert_eq!(r.status(), 500);
    let text = r.text().unwrap();
    assert!(
        text.contains("command not found") && text.contains("no-such-program"),
        "{text}"
    );
}

/// `lang: node` is OpenFaaS's classic node template: `(context, callback)` handlers (or ones
/// returning a promise) get the body as a string; an `(event, context)` handler deployed with
/// it gets an error naming the template it needs; node18/node20/node22 are the HTTP one.
#[test]
fn classic_node_handlers_and_the_node20_template() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let p = Platform::start(data.path());
    let handlers = [
        ("cb", "node", "module.exports = (context, callback) => {\n  callback(undefined, { got: context })\n}\n"),
        ("promised", "node", "module.exports = async (context) => `len=${context.length}`\n"),
        ("misplaced", "node", "module.exports = async (event, context) => context.status(200).succeed('hi')\n"),
        ("http18", "node18", "module.exports = async (event, context) => context.status(201).succeed({ body: event.body })\n"),
    ];
    for (name, lang, code) in handlers {
        p.cli(dir, &["new", name, "--lang", lang]);
        std::fs::write(dir.join(name).join("handler.js"), code).unwrap();
    }
    p.cli(dir, &["deploy"]);
    assert_eq!(p.invoke("cb", "abc").text().unwrap(), "{\"got\":\"abc\"}\n");
    assert_eq!(p.invoke("promised", "abcd").text().unwrap(), "len=4");
    let r = p.invoke("misplaced", "x");
    assert_eq!(r.status(), 500);
    let text = r.text().unwrap();
    assert!(text.contains("lang: node20"), "{text}");
    let r = p
        .anon(reqwest::Method::POST, "/function/http18")
        .header("Content-Type", "application/json")
        .body("{\"a\":1}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.json::<serde_json::Value>().unwrap(),
        serde_json::json!({"body": {"a": 1}})
    );
}
