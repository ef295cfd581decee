//! The console's namespaces in a real browser: the switcher lists the namespaces, the one
//! chosen is in the address and survives a reload, and the list, invoke, logs, edit, scale,
//! deploy and delete all act in it (a function of the same name in another namespace is
//! never touched).

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use virga_testkit::browser::{output_path, Browser};
use virga_testkit::{script, Platform, PASSWORD};

const LONG: Duration = Duration::from_secs(30);

/// Create namespace `name` as faas-cli does; asserts 201.
pub(crate) fn create_ns(p: &Platform, name: &str) {
    let r = p.send_json(Method::POST, "/system/namespace/", json!({"name": name}));
    assert_eq!(r.status, 201, "create {name}: {}", r.text);
}

/// Choose `value` in the select `id` as a person does: the value changes, then `change` fires.
pub(crate) fn choose(b: &mut Browser, id: &str, value: &str) {
    let js = format!(
        "(() => {{ const s = document.getElementById('{id}'); \
         if (![...s.options].some((o) => o.value === '{value}')) return false; \
         s.value = '{value}'; s.dispatchEvent(new Event('change', {{bubbles: true}})); \
         return true; }})()"
    );
    b.wait_for(&format!("{value} in #{id}"), &js, LONG);
}

/// The JS expression: the names of the function list's rows, sorted, joined by a comma.
pub(crate) const ROWS: &str =
    "[...document.querySelectorAll('#fn-rows tr')].map((r) => r.dataset.name).sort().join(',')";

/// The JS expression: the values of the switcher's options, joined by a comma.
pub(crate) const SWITCHER: &str =
    "[...document.getElementById('ns-select').options].map((o) => o.value).join(',')";

/// Wait until the list shows exactly `names` (sorted, comma-joined).
pub(crate) fn wait_rows(b: &mut Browser, names: &str) {
    b.wait_for(
        &format!("the rows {names}"),
        &format!("{ROWS} === '{names}'"),
        LONG,
    );
}

/// Wait until the page has not scrolled for half a second.
pub(crate) fn settle(b: &mut Browser) {
    b.eval("window.__still = null");
    b.wait_for(
        "the page to stop scrolling",
        "(() => { const y = window.scrollY, now = Date.now(), s = window.__still; \
         if (!s || s.y !== y) { window.__still = {y, since: now}; return false; } \
         return now - s.since >= 500; })()",
        LONG,
    );
}

fn sign_in(b: &mut Browser, p: &Platform) {
    let console = p.console_url.clone().expect("the console is on by default");
    b.call("Page.navigate", json!({"url": format!("{console}/ui/")}));
    b.type_into("#login-password", PASSWORD);
    b.click("#login-submit");
}

/// A platform with `hello` in both namespaces (each answers with its namespace and writes it
/// to stderr), and one function only in each.
fn two_namespaces(dir: &std::path::Path) -> Platform {
    let p = Platform::start_with(&dir.join("data"), &["--scale-down-window", "600"]);
    create_ns(&p, "team-a");
    for ns in ["openfaas-fn", "team-a"] {
        let hello = script(
            dir,
            &format!("hello-{ns}.sh"),
            &format!("echo \"log line of {ns}\" >&2\nprintf '{ns}: '\ncat"),
        );
        p.deploy_process("hello", &hello, json!({"namespace": ns}));
    }
    p.deploy_process("only-default", "cat", json!({}));
    p.deploy_process("only-a", "cat", json!({"namespace": "team-a"}));
    p
}

#[test]
fn console_switches_namespaces_and_acts_in_the_chosen_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = two_namespaces(dir.path());
    // Who the console signs in as (the admin: every namespace).
    assert_eq!(
        p.get_json("/system/virga/whoami"),
        json!({"name": "admin", "role": "admin", "namespaces": null})
    );
    let mut b = Browser::launch();
    sign_in(&mut b, &p);

    // The default namespace first, named in the address; the switcher lists both.
    wait_rows(&mut b, "hello,only-default");
    assert_eq!(b.eval(SWITCHER), "openfaas-fn,team-a");
    assert_eq!(b.value("#ns-select"), "openfaas-fn");
    assert_eq!(b.eval("location.hash"), "#namespace=openfaas-fn");
    assert_eq!(b.text("#who"), "admin · admin");

    // Switch: only team-a's functions, and the address and the title say so.
    choose(&mut b, "ns-select", "team-a");
    wait_rows(&mut b, "hello,only-a");
    assert_eq!(b.eval("location.hash"), "#namespace=team-a");
    assert!(b.text("#fn-title").contains("team-a"));
    assert!(b
        .eval("document.title")
        .as_str()
        .unwrap()
        .starts_with("team-a"));
    b.screenshot(&output_path("console-namespaces.png"));

    invoke_and_follow_logs(&mut b);
    edit_and_scale(&mut b, &p);
    deploy_and_delete(&mut b, &p);

    // A reload keeps the namespace; switching back shows the default one's again.
    b.call("Page.reload", json!({}));
    wait_rows(&mut b, "fresh,hello");
    assert_eq!(b.value("#ns-select"), "team-a");
    choose(&mut b, "ns-select", "openfaas-fn");
    wait_rows(&mut b, "hello,only-default");
    assert_eq!(b.eval("location.hash"), "#namespace=openfaas-fn");
}

/// Invoke team-a's `hello` from its row and follow its logs: team-a's answers and lines only.
fn invoke_and_follow_logs(b: &mut Browser) {
    b.click("tr[data-name=\"hello\"] button[data-action=\"logs\"]");
    b.wait_for(
        "team-a's hello's logs",
        "document.getElementById('l-status').textContent.includes('Following hello')",
        LONG,
    );
    // The logs card scrolls into view smoothly: a click during that scroll lands elsewhere.
    settle(b);
    b.click("tr[data-name=\"hello\"] button[data-action=\"invoke\"]");
    b.wait_for(
        "the invoke form to pick hello",
        "document.getElementById('i-fn').value === 'hello'",
        LONG,
    );
    assert_eq!(b.text("#invoke-url"), "POST /function/hello.team-a");
    settle(b);
    b.type_into("#i-body", "Ada");
    b.click("#invoke-submit");
    b.wait_for(
        "the call's result",
        "document.getElementById('i-status').textContent.startsWith('200')",
        LONG,
    );
    assert_eq!(b.text("#i-output"), "team-a: Ada");
    b.wait_for(
        "team-a's log line",
        "document.getElementById('l-out').textContent.includes('log line of team-a')",
        LONG,
    );
    assert!(!b.text("#l-out").contains("log line of openfaas-fn"));
}

/// Edit and scale team-a's `hello`: the form holds its definition, the scale is its own.
fn edit_and_scale(b: &mut Browser, p: &Platform) {
    b.click("tr[data-name=\"hello\"] button[data-action=\"edit\"]");
    b.wait_for(
        "the edit form",
        "document.getElementById('edit-dialog').open && \
         !document.getElementById('edit-form').hidden",
        LONG,
    );
    assert!(b.value("#e-envProcess").ends_with("hello-team-a.sh"));
    assert!(b.text("#edit-title").contains("team-a"));
    b.type_into("#e-envVars", "WHO=team-a");
    b.click("#edit-save");
    b.wait_for(
        "the saved message",
        "document.getElementById('edit-ok').textContent.startsWith('Saved hello')",
        LONG,
    );
    b.type_into("#e-replicas", "2");
    b.click("#scale-submit");
    b.wait_for(
        "the scale confirmation",
        "!document.getElementById('scale-ok').hidden",
        LONG,
    );
    let a = p.get_json("/system/function/hello?namespace=team-a");
    assert_eq!(a["replicas"], 2, "{a}");
    assert_eq!(a["envVars"], json!({"WHO": "team-a"}), "{a}");
    let default = p.get_json("/system/function/hello");
    assert_eq!(default["replicas"], 1, "{default}");
    assert!(default["envVars"]["WHO"].is_null(), "{default}");
    b.click("#edit-close");
}

/// Deploy `fresh` from the form and delete `only-a`: both in team-a.
fn deploy_and_delete(b: &mut Browser, p: &Platform) {
    assert!(b.text("#deploy-card").contains("into team-a"));
    b.type_into("#d-service", "fresh");
    b.type_into("#d-envProcess", "cat");
    b.click("#deploy-submit");
    b.wait_for(
        "the deploy confirmation",
        "!document.getElementById('deploy-ok').hidden",
        LONG,
    );
    wait_rows(b, "fresh,hello,only-a");
    let status = |path: &str| p.sys(Method::GET, path).send().unwrap().status().as_u16();
    assert_eq!(status("/system/function/fresh?namespace=team-a"), 200);
    assert_eq!(status("/system/function/fresh"), 404);

    b.click("tr[data-name=\"only-a\"] button[data-action=\"delete\"]");
    b.wait_for(
        "the confirmation dialog",
        "document.getElementById('confirm-delete').open",
        LONG,
    );
    b.click("#confirm-ok");
    wait_rows(b, "fresh,hello");
    assert_eq!(status("/system/function/only-a?namespace=team-a"), 404);
    assert_eq!(status("/system/function/only-default"), 200);
}
