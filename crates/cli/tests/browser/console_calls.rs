//! The console's "Calls in progress" card lists a call of the namespace shown while it runs
//! (with its call id, kind and instance) and drops it once it ends.

use std::time::Duration;

use serde_json::json;
use virga_testkit::browser::{output_path, Browser};
use virga_testkit::{Platform, PASSWORD};

#[test]
fn console_shows_the_calls_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(&dir.path().join("data"));
    p.deploy_process("slow", "sh -c 'sleep 6; echo done'", json!({}));
    let mut b = Browser::launch();
    let console = p.console_url.clone().expect("the console is on by default");
    b.call("Page.navigate", json!({"url": format!("{console}/ui/")}));
    b.type_into("#login-password", PASSWORD);
    b.click("#login-submit");
    b.wait_for(
        "the empty card",
        "!document.getElementById('calls-empty').hidden",
        Duration::from_secs(30),
    );
    let call = p
        .anon(reqwest::Method::POST, "/function/slow")
        .header("X-Call-Id", "console-call-1")
        .timeout(Duration::from_secs(30));
    let running = std::thread::spawn(move || call.send().unwrap().text().unwrap());
    let row = "document.querySelector('tr[data-call=\"console-call-1\"]')";
    b.wait_for(
        "the call's row",
        &format!("!!{row}"),
        Duration::from_secs(10),
    );
    let text = b.eval(&format!("{row}.textContent"));
    let text = text.as_str().unwrap_or_default();
    assert!(
        text.starts_with("slowsyncPOST /console-call-1slow-"),
        "{text}"
    );
    assert_eq!(
        b.eval("document.getElementById('calls-summary').textContent")
            .as_str(),
        Some("1 running")
    );
    b.screenshot(&output_path("console-calls.png"));
    assert_eq!(running.join().unwrap(), "done\n");
    b.wait_for(
        "the row's removal",
        &format!("!{row}"),
        Duration::from_secs(10),
    );
}
