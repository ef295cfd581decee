//! Signing in to the console with an API token, in a real browser: a wrong token shows the
//! gateway's own 401 message; a viewer token of team-a sees team-a only (the switcher lists
//! only it), its functions read-only and no action that changes anything, and a namespace
//! outside it shows the gateway's 403; an invoker token calls its namespace's functions, and
//! once revoked the console signs out saying so.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use virga_testkit::browser::{output_path, Browser};
use virga_testkit::Platform;

use crate::console_namespaces::{choose, create_ns, settle, wait_rows, SWITCHER};

const LONG: Duration = Duration::from_secs(30);

/// The JS expression: how many row buttons there are for `action`.
fn buttons(action: &str) -> String {
    format!("document.querySelectorAll('#fn-rows button[data-action=\"{action}\"]').length")
}

/// A token of `role` in team-a, made by the admin: its id and the token.
fn token(p: &Platform, name: &str, role: &str) -> (String, String) {
    let r = p.send_json(
        Method::POST,
        "/system/virga/tokens",
        json!({"name": name, "role": role, "namespaces": ["team-a"]}),
    );
    assert_eq!(r.status, 201, "{}", r.text);
    let v: serde_json::Value = serde_json::from_str(&r.text).unwrap();
    let field = |k: &str| v[k].as_str().unwrap().to_string();
    (field("id"), field("token"))
}

/// What the gateway answers `token` on `path`: the status and the message.
fn gateway_says(p: &Platform, path: &str, token: &str) -> (u16, String) {
    let r = p.anon(Method::GET, path).bearer_auth(token).send().unwrap();
    (r.status().as_u16(), r.text().unwrap().trim().to_string())
}

fn sign_in_with_token(b: &mut Browser, token: &str) {
    b.click("#login-as-token");
    b.type_into("#login-token", token);
    b.click("#login-submit");
}

#[test]
fn console_signs_in_with_tokens_and_shows_only_what_they_may_do() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(&dir.path().join("data"));
    create_ns(&p, "team-a");
    p.deploy_process("only-a", "cat", json!({"namespace": "team-a"}));
    p.deploy_process("only-default", "cat", json!({}));
    let (_, viewer) = token(&p, "watcher", "viewer");
    let (invoker_id, invoker) = token(&p, "caller", "invoker");

    let mut b = Browser::launch();
    let console = p.console_url.clone().expect("the console is on by default");
    b.call("Page.navigate", json!({"url": format!("{console}/ui/")}));

    // A wrong token: the gateway's own message, under the token field.
    // Its last character changed: well-formed, but no token here.
    let last = if viewer.ends_with('a') { "b" } else { "a" };
    let wrong = format!("{}{last}", &viewer[..viewer.len() - 1]);
    let (status, refused) = gateway_says(&p, "/system/virga/whoami", &wrong);
    assert_eq!(status, 401, "{refused}");
    assert!(refused.starts_with("unauthorized: "), "{refused}");
    sign_in_with_token(&mut b, &wrong);
    b.wait_for(
        "the gateway's 401 message",
        &format!(
            "document.getElementById('login-error').textContent === {}",
            serde_json::to_string(&refused).unwrap()
        ),
        LONG,
    );
    assert_eq!(b.eval("document.getElementById('app').hidden"), true);
    b.screenshot(&output_path("console-token-login.png"));

    // A viewer of team-a: team-a only, read-only.
    b.type_into("#login-token", &viewer);
    b.click("#login-submit");
    wait_rows(&mut b, "only-a");
    assert_eq!(b.eval(SWITCHER), "team-a");
    assert_eq!(b.text("#who"), "token:watcher · viewer");
    for action in ["invoke", "edit", "delete"] {
        assert_eq!(b.eval(&buttons(action)), 0, "{action}");
    }
    assert_eq!(b.eval(&buttons("logs")), 1);
    assert_eq!(
        b.eval("[document.getElementById('deploy-card').hidden, document.getElementById('invoke-card').hidden]"),
        json!([true, true])
    );
    assert!(b
        .text("#role-note")
        .contains("a viewer in team-a: read-only"));
    b.eval("window.scrollTo(0, 0)");
    b.screenshot(&output_path("console-viewer.png"));
    viewer_sees_details(&mut b);

    // A namespace outside the token (a link to it): the gateway's 403, and the way back.
    let (status, forbidden) = gateway_says(&p, "/system/functions?namespace=openfaas-fn", &viewer);
    assert_eq!(status, 403, "{forbidden}");
    b.call(
        "Page.navigate",
        json!({"url": format!("{console}/ui/#namespace=openfaas-fn")}),
    );
    b.wait_for(
        "the gateway's 403 in the banner",
        &format!(
            "!document.getElementById('fn-error').hidden && \
             document.getElementById('fn-error').textContent.includes({})",
            serde_json::to_string(&forbidden).unwrap()
        ),
        LONG,
    );
    wait_rows(&mut b, "");
    assert!(b.text("#ns-select").contains("openfaas-fn (not available)"));
    choose(&mut b, "ns-select", "team-a");
    wait_rows(&mut b, "only-a");
    assert_eq!(b.eval(SWITCHER), "team-a");

    // An invoker of team-a calls its functions, and still changes nothing.
    b.click("#logout");
    sign_in_with_token(&mut b, &invoker);
    wait_rows(&mut b, "only-a");
    assert_eq!(b.text("#who"), "token:caller · invoker");
    assert_eq!(b.eval(&buttons("invoke")), 1);
    assert_eq!(b.eval(&buttons("delete")), 0);
    assert!(b
        .eval("document.getElementById('deploy-card').hidden")
        .as_bool()
        .unwrap());
    b.click("tr[data-name=\"only-a\"] button[data-action=\"invoke\"]");
    settle(&mut b);
    b.type_into("#i-body", "called by a token");
    b.click("#invoke-submit");
    b.wait_for(
        "the call's result",
        "document.getElementById('i-status').textContent.startsWith('200')",
        LONG,
    );
    assert_eq!(b.text("#i-output"), "called by a token");

    // Revoked while signed in: the next refresh signs out, saying why.
    let r = p.send_json(
        Method::DELETE,
        &format!("/system/virga/tokens/{invoker_id}"),
        json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    b.wait_for(
        "the sign-in screen saying the token was revoked",
        "!document.getElementById('login').hidden && \
         document.getElementById('login-error').textContent.includes('was revoked at')",
        LONG,
    );
    assert_eq!(b.eval("sessionStorage.getItem('virga.auth')"), json!(null));
}

/// A viewer's "Details" shows the definition read-only, with no save or scale.
fn viewer_sees_details(b: &mut Browser) {
    b.click("tr[data-name=\"only-a\"] button[data-action=\"details\"]");
    b.wait_for(
        "the read-only definition",
        "document.getElementById('edit-dialog').open && \
         !document.getElementById('edit-form').hidden",
        LONG,
    );
    assert_eq!(b.value("#e-envProcess"), "cat");
    assert_eq!(b.text("#edit-verb"), "Details of");
    assert_eq!(
        b.eval(
            "[document.getElementById('e-envProcess').readOnly, \
             document.getElementById('edit-actions').hidden, \
             document.getElementById('scale-form').hidden]"
        ),
        json!([true, true, true])
    );
    b.click("#edit-close");
    b.wait_for(
        "the dialog to close",
        "!document.getElementById('edit-dialog').open",
        LONG,
    );
}
