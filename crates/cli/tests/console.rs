//! The web console in a real browser: the real `virga up`, headless Chromium driven over the
//! DevTools protocol (`browser`), and the page used as a person would, on the console's own
//! origin: sign in, deploy from the form, see the API's message next to a bad field, invoke,
//! follow live logs, see the chart, delete with confirmation. A screenshot is saved to
//! `target/test-output/console.png`.

mod browser;
mod common;

use std::time::Duration;

use browser::{output_path, Browser};
use common::{script, Platform, PASSWORD};
use serde_json::{json, Value};

/// True when the gateway serves `/system/logs` (the route is added by another issue).
fn has_logs_route(p: &Platform, name: &str) -> bool {
    let r = p
        .sys(
            reqwest::Method::GET,
            &format!("/system/logs?name={name}&tail=1"),
        )
        .timeout(Duration::from_secs(10))
        .send()
        .unwrap();
    let status = r.status();
    let body = r.text().unwrap_or_default();
    !(status == 404 && body.contains("no such route"))
}

#[test]
fn console_files_are_served_with_types_and_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let console = p
        .console_url
        .clone()
        .expect("the console has its own address");
    assert_ne!(console, p.url);
    let no_redirect = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect.get(format!("{console}/ui")).send().unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    assert_eq!(r.headers()["location"], "/ui/");

    for (path, ty, needle) in [
        ("/ui/", "text/html", "Sign in to the console"),
        ("/ui/app.js", "text/javascript", "/system/functions"),
        ("/ui/style.css", "text/css", ":root"),
        ("/ui/favicon.svg", "image/svg+xml", "<svg"),
    ] {
        // No credentials: the files are public and carry no data.
        let r = p.http.get(format!("{console}{path}")).send().unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert!(
            h["content-type"].to_str().unwrap().starts_with(ty),
            "{path}: {h:?}"
        );
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        assert!(h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'"));
        let etag = h["etag"].to_str().unwrap().to_string();
        let body = r.text().unwrap();
        assert!(body.contains(needle), "{path} lacks {needle:?}");
        assert!(!body.contains(PASSWORD));
        // Nothing is loaded from elsewhere (the SVG namespace is a name, not a link).
        let links = body.replace("http://www.w3.org/2000/svg", "");
        assert!(
            !links.contains("http://") && !links.contains("https://"),
            "{path} links elsewhere"
        );
        let again = p
            .http
            .get(format!("{console}{path}"))
            .header("if-none-match", etag)
            .send()
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
    }
    let r = p.http.get(format!("{console}/ui/nope.js")).send().unwrap();
    assert_eq!(r.status(), 404);
    // The API stays closed to the page's visitors without credentials.
    let r = p
        .http
        .get(format!("{console}/system/functions"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn console_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(&dir.path().join("data"));
    let echo = script(
        dir.path(),
        "echo-log.sh",
        "echo \"console-log-line: handling a $Http_Method call\" >&2\ncat",
    );
    let mut b = Browser::launch();
    let long = Duration::from_secs(30);

    let console = p
        .console_url
        .clone()
        .expect("the console has its own address");
    b.call("Page.navigate", json!({"url": format!("{console}/ui/")}));
    b.wait_for(
        "the login screen",
        "!!document.getElementById('login') && !document.getElementById('login').hidden",
        long,
    );

    // A wrong password is refused next to the field.
    b.type_into("#login-password", "not-the-password");
    b.click("#login-submit");
    b.wait_for(
        "the wrong-password message",
        "document.getElementById('login-error').textContent.includes('Wrong user or password')",
        long,
    );
    b.screenshot(&output_path("console-login.png"));

    // Sign in; the empty state says what to do.
    b.type_into("#login-password", PASSWORD);
    b.click("#login-submit");
    b.wait_for(
        "the empty function list",
        "!document.getElementById('app').hidden && !document.getElementById('fn-empty').hidden",
        long,
    );
    let empty = b.text("#fn-empty");
    assert!(empty.contains("No functions yet"), "{empty}");
    assert!(empty.contains("virga deploy"), "{empty}");
    assert!(
        b.eval("sessionStorage.getItem('virga.auth') !== null")
            .as_bool()
            .unwrap(),
        "credentials are kept in sessionStorage"
    );

    // An invalid name: the API's 400 message shows next to the name field.
    b.type_into("#d-service", "Bad");
    b.type_into("#d-envProcess", "cat");
    b.click("#deploy-submit");
    let msg = b.wait_for(
        "the API's message next to the name",
        "document.getElementById('err-service').textContent",
        long,
    );
    let msg = msg.as_str().unwrap();
    assert!(
        msg.starts_with("service: \"Bad\" is not a valid name"),
        "{msg}"
    );
    assert!(b
        .eval(
            "document.getElementById('d-service').closest('.field')\
             .contains(document.getElementById('err-service')) && \
             document.getElementById('d-service').getAttribute('aria-invalid') === 'true'"
        )
        .as_bool()
        .unwrap());
    b.screenshot(&output_path("console-invalid-name.png"));

    // Deploy from the form: a command that echoes its input and writes a line to stderr.
    b.type_into("#d-service", "echo-log");
    b.type_into("#d-envProcess", &echo);
    b.type_into("#d-envVars", "GREETING=hello");
    b.type_into("#d-labels", "team=web");
    b.type_into("#d-memory", "64Mi");
    b.type_into("#d-cpu", "0.5");
    b.click("#deploy-submit");
    b.wait_for(
        "the deploy confirmation",
        "!document.getElementById('deploy-ok').hidden",
        long,
    );
    assert_eq!(b.text("#err-service"), "");
    b.wait_for(
        "echo-log to be ready in the list",
        "(() => { const r = document.querySelector('tr[data-name=\"echo-log\"]'); \
         return !!r && r.textContent.includes('Ready') && r.textContent.includes('1 / 1'); })()",
        long,
    );
    let f: Value = p
        .sys(reqwest::Method::GET, "/system/function/echo-log")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(f["envProcess"], echo.as_str());
    assert_eq!(f["envVars"]["GREETING"], "hello");
    assert_eq!(f["labels"]["team"], "web");
    assert_eq!(f["limits"]["memory"], "64Mi");
    assert_eq!(f["limits"]["cpu"], "0.5");

    // Follow its logs, then invoke it from the page.
    b.click("tr[data-name=\"echo-log\"] button[data-action=\"logs\"]");
    b.wait_for(
        "the log view to connect",
        "(() => { const s = document.getElementById('l-status').textContent; \
         return s.includes('Following echo-log') || s.includes('Logs unavailable'); })()",
        long,
    );
    b.click("tr[data-name=\"echo-log\"] button[data-action=\"invoke\"]");
    b.wait_for(
        "the invoke form to pick echo-log",
        "document.getElementById('i-fn').value === 'echo-log'",
        long,
    );
    b.type_into("#i-body", "hello from the console");
    b.click("#invoke-submit");
    b.wait_for(
        "the call's result",
        "document.getElementById('i-status').textContent.startsWith('200')",
        long,
    );
    assert_eq!(b.text("#i-output"), "hello from the console");
    let duration = b.text("#i-duration");
    assert!(duration.contains("ms round trip"), "{duration}");
    assert!(
        b.text("#i-headers").contains("x-duration-seconds"),
        "response headers are listed"
    );

    if has_logs_route(&p, "echo-log") {
        b.wait_for(
            "the function's stderr line in the live logs",
            "document.getElementById('l-out').textContent.includes('console-log-line: handling a POST call')",
            long,
        );
    } else {
        eprintln!("console test: /system/logs is not served yet; checking the graceful message");
        let status = b.text("#l-status");
        assert!(status.contains("Logs unavailable"), "{status}");
    }

    // The chart picks the call up from the sampled counters.
    b.wait_for(
        "the activity chart",
        "!document.getElementById('charts').hidden && \
         document.querySelectorAll('#chart-calls circle').length > 0 && \
         document.querySelectorAll('#chart-latency circle').length > 0",
        long,
    );
    b.wait_for(
        "the invocation count in the list",
        "document.querySelector('tr[data-name=\"echo-log\"]').children[3].textContent === '1'",
        long,
    );
    b.eval("window.scrollTo(0, 0)");
    b.screenshot(&output_path("console.png"));

    // Delete, with confirmation.
    b.click("tr[data-name=\"echo-log\"] button[data-action=\"delete\"]");
    b.wait_for(
        "the confirmation dialog",
        "document.getElementById('confirm-delete').open",
        long,
    );
    assert!(b.text("#confirm-name").contains("echo-log"));
    b.click("#confirm-ok");
    b.wait_for(
        "the empty list after delete",
        "!document.querySelector('tr[data-name=\"echo-log\"]') && \
         !document.getElementById('fn-empty').hidden",
        long,
    );
    let r = p
        .sys(reqwest::Method::GET, "/system/function/echo-log")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
}
