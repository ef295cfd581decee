//! The console's function list shows each function's triggers: its schedule with the next
//! run, and its topics per connector (marked off when the connector is not enabled).

use std::time::Duration;

use serde_json::json;
use virga_testkit::browser::Browser;
use virga_testkit::{Platform, PASSWORD};

#[test]
fn console_shows_a_functions_triggers() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(&dir.path().join("data"));
    p.deploy_process(
        "nightly",
        "cat",
        json!({"annotations": {"topic": "cron-function,orders", "schedule": "@hourly"}}),
    );
    p.deploy_process("plain", "cat", json!({}));
    let mut b = Browser::launch();
    let console = p.console_url.clone().expect("the console is on by default");
    b.call("Page.navigate", json!({"url": format!("{console}/ui/")}));
    b.type_into("#login-password", PASSWORD);
    b.click("#login-submit");
    let cell = |name: &str| {
        format!("(document.querySelector('tr[data-name=\"{name}\"] td.triggers') || {{}}).textContent || ''")
    };
    b.wait_for(
        "nightly's triggers",
        &format!("{}.includes('cron @hourly, next ')", cell("nightly")),
        Duration::from_secs(30),
    );
    let text = b.eval(&cell("nightly"));
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains("nats orders (off)"), "{text}");
    assert!(text.contains("mqtt orders (off)"), "{text}");
    assert_eq!(b.eval(&cell("plain")).as_str(), Some("—"));
}
