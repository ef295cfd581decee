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
