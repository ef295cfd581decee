//! The web console in a real browser: the real `virga up`, headless Chromium driven over the
//! DevTools protocol (`browser`), and the page used as a person would, on the console's own
//! origin: sign in, deploy from the form, see the API's message next to a bad field, invoke,
//! follow live logs, see the chart, delete with confirmation; edit a function's definition and
//! scale it. Screenshots are saved to `target/test-output/` (`console.png` shows the edit form).

use std::time::Duration;

use serde_json::{json, Value};
use virga_testkit::browser::{output_path, Browser};
use virga_testkit::{script, Platform, PASSWORD};

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
        ("/ui/core.js", "text/javascript", "Authorization"),
        ("/ui/chart.js", "text/javascript", "/metrics"),
        ("/ui/edit.js", "text/javascript", "/system/scale-function/"),
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

/// An http-mode function that answers every POST with its own 401.
const DENY: &str = r#"
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
PORT = int(os.environ["upstream_url"].rsplit(":", 1)[1])
class Deny(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"who are you?\n"
        self.send_response(401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer(("127.0.0.1", PORT), Deny).serve_forever()
"#;

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

    // A bad limit: the API's message ("limits.memory: …") shows next to the limits.
    b.type_into("#d-service", "echo-log");
    b.type_into("#d-memory", "lots");
    b.click("#deploy-submit");
    let msg = b.wait_for(
        "the API's message next to the limits",
        "document.getElementById('err-limits').textContent",
        long,
    );
    assert!(
        msg.as_str().unwrap().starts_with("limits.memory: "),
        "{msg}"
    );
    assert!(b
        .eval("document.getElementById('deploy-error').hidden")
        .as_bool()
        .unwrap());

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

    // A function that answers 401 itself: its answer is shown, the session goes on.
    let upstream = format!("http://127.0.0.1:{}", virga_testkit::free_port());
    p.deploy_bundle(
        "deny",
        &[("deny.py", DENY)],
        "python3 deny.py",
        serde_json::json!({"envVars": {"mode": "http", "upstream_url": upstream}}),
    );
    b.wait_for(
        "the deny row",
        "document.querySelector('tr[data-name=\"deny\"] button[data-action=\"invoke\"]') !== null",
        long,
    );
    b.click("tr[data-name=\"deny\"] button[data-action=\"invoke\"]");
    b.wait_for(
        "the invoke form to pick deny",
        "document.getElementById('i-fn').value === 'deny'",
        long,
    );
    b.click("#invoke-submit");
    b.wait_for(
        "the function's 401",
        "document.getElementById('i-status').textContent.startsWith('401')",
        long,
    );
    assert_eq!(b.text("#i-output").trim(), "who are you?");
    assert_eq!(
        b.eval("document.getElementById('login').hidden"),
        serde_json::json!(true),
        "still signed in"
    );
    let gone = p.send_json(
        reqwest::Method::DELETE,
        "/system/functions",
        serde_json::json!({"functionName": "deny"}),
    );
    assert_eq!(gone.status, 200, "{}", gone.text);

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
    b.screenshot(&output_path("console-activity.png"));

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

/// The JS expression: the `tr` of function `name` shows `replicas` ("ready / wanted").
fn row_shows(name: &str, replicas: &str) -> String {
    format!(
        "(() => {{ const r = document.querySelector('tr[data-name=\"{name}\"]'); \
         return !!r && r.children[2].textContent === '{replicas}'; }})()"
    )
}

#[test]
fn console_edits_and_scales_a_function() {
    let dir = tempfile::tempdir().unwrap();
    // A manual scale holds for the scale-down window: longer than the test, so the
    // autoscaler does not take the replicas back while it looks.
    let p = Platform::start_with(&dir.path().join("data"), &["--scale-down-window", "600"]);
    let greet = script(dir.path(), "greet.sh", "printf '%s, ' \"$GREETING\"\ncat");
    p.create_secret("db-password", "hunter2");
    let kept = json!({
        "annotations": {"owner": "ada ", "note": "first line\nsecond line"},
        "secrets": ["db-password"],
        "requests": {"memory": "32Mi"},
        "constraints": ["zone=a"],
        "readOnlyRootFilesystem": true,
    });
    let mut extra = kept.clone();
    extra["envVars"] = json!({"GREETING": "hello"});
    extra["labels"] = json!({"team": "web", "com.openfaas.scale.max": "3"});
    extra["limits"] = json!({"memory": "64Mi"});
    p.deploy_process("greet", &greet, extra);
    assert_eq!(p.invoke("greet", "Ada").text().unwrap(), "hello, Ada");

    let mut b = Browser::launch();
    let long = Duration::from_secs(30);
    let console = p.console_url.clone().expect("the console is on by default");
    b.call("Page.navigate", json!({"url": format!("{console}/ui/")}));
    b.type_into("#login-password", PASSWORD);
    b.click("#login-submit");
    b.wait_for("greet in the list", &row_shows("greet", "1 / 1"), long);

    // Edit from the list: the form holds the stored definition.
    b.click("tr[data-name=\"greet\"] button[data-action=\"edit\"]");
    b.wait_for(
        "the edit form",
        "document.getElementById('edit-dialog').open && \
         !document.getElementById('edit-form').hidden",
        long,
    );
    assert_eq!(b.text("#edit-name"), "greet");
    assert_eq!(b.value("#e-envProcess"), greet);
    assert_eq!(b.value("#e-image"), "");
    assert_eq!(b.value("#e-envVars"), "GREETING=hello");
    assert_eq!(b.value("#e-labels"), "com.openfaas.scale.max=3\nteam=web");
    // A multi-line value does not fit a KEY=value line: it is kept aside, and saved as it is.
    assert_eq!(b.value("#e-annotations"), "owner=ada ");
    assert_eq!(b.value("#e-secrets"), "db-password");
    assert_eq!(b.value("#e-memory"), "64Mi");
    assert_eq!(b.value("#e-cpu"), "");
    assert_eq!(b.value("#e-replicas"), "1");
    let note = b.text("#e-kept");
    for field in [
        "constraints",
        "requests",
        "readOnlyRootFilesystem",
        "annotations \"note\"",
    ] {
        assert!(note.contains(field), "{note}");
    }
    b.wait_for(
        "the replicas now",
        "document.getElementById('e-replicas-now').textContent.startsWith('Now 1 ready of 1 wanted')",
        long,
    );

    // Saving an untouched form sends nothing.
    b.click("#edit-save");
    b.wait_for(
        "the nothing-changed message",
        "document.getElementById('edit-ok').textContent.startsWith('Nothing changed')",
        long,
    );

    // A bad watchdog value: the API's message next to the environment, and nothing changes.
    b.type_into("#e-envVars", "GREETING=hi\nexec_timeout=banana");
    b.type_into("#e-labels", "com.openfaas.scale.max=3\nteam=api");
    b.click("#edit-save");
    let msg = b.wait_for(
        "the API's message next to the environment",
        "document.getElementById('err-e-envVars').textContent",
        long,
    );
    let msg = msg.as_str().unwrap();
    assert!(
        msg.starts_with("envVars.exec_timeout: \"banana\" is not valid"),
        "{msg}"
    );
    assert!(b
        .eval(
            "document.getElementById('e-envVars').closest('.field')\
             .contains(document.getElementById('err-e-envVars')) && \
             document.getElementById('e-envVars').getAttribute('aria-invalid') === 'true' && \
             document.getElementById('edit-ok').hidden"
        )
        .as_bool()
        .unwrap());
    let f = p.get_json("/system/function/greet");
    assert_eq!(f["envVars"], json!({"GREETING": "hello"}));
    assert_eq!(f["labels"]["team"], "web");
    assert_eq!(p.invoke("greet", "Ada").text().unwrap(), "hello, Ada");

    // Fixed, it saves: the new env and label are stored, the rest is as it was (the blank
    // after "ada" too), and the function answers with the new env.
    b.type_into("#e-envVars", "GREETING=hi");
    assert_eq!(b.text("#err-e-envVars"), "", "typing clears the message");
    b.click("#edit-save");
    b.wait_for(
        "the saved message",
        "!document.getElementById('edit-ok').hidden && \
         document.getElementById('edit-ok').textContent.startsWith('Saved greet')",
        long,
    );
    let f = p.get_json("/system/function/greet");
    assert_eq!(f["envProcess"], greet.as_str());
    assert_eq!(f["envVars"], json!({"GREETING": "hi"}));
    assert_eq!(
        f["labels"],
        json!({"team": "api", "com.openfaas.scale.max": "3"})
    );
    assert_eq!(f["limits"], json!({"memory": "64Mi"}));
    for (k, v) in kept.as_object().unwrap() {
        assert_eq!(&f[k], v, "{k} is kept");
    }
    assert_eq!(p.invoke("greet", "Ada").text().unwrap(), "hi, Ada");

    // Beyond com.openfaas.scale.max: the API's message next to the replicas, nothing changes.
    b.type_into("#e-replicas", "5");
    b.click("#scale-submit");
    let msg = b.wait_for(
        "the API's message next to the replicas",
        "document.getElementById('err-e-replicas').textContent",
        long,
    );
    let msg = msg.as_str().unwrap();
    assert!(
        msg.starts_with("replicas: 5 is more than function \"greet\" may have (3"),
        "{msg}"
    );
    assert!(b
        .eval("document.getElementById('scale-ok').hidden")
        .as_bool()
        .unwrap());
    assert_eq!(p.get_json("/system/function/greet")["replicas"], 1);

    // Scale to the max: the list and the dialog follow the instances as they come up.
    b.type_into("#e-replicas", "3");
    b.click("#scale-submit");
    b.wait_for(
        "the scale confirmation",
        "!document.getElementById('scale-ok').hidden",
        long,
    );
    assert_eq!(p.get_json("/system/function/greet")["replicas"], 3);
    b.wait_for(
        "3 ready instances in the list",
        &row_shows("greet", "3 / 3"),
        long,
    );
    b.wait_for(
        "3 ready instances in the dialog",
        "document.getElementById('e-replicas-now').textContent.startsWith('Now 3 ready of 3 wanted')",
        long,
    );
    assert_eq!(p.get_json("/system/function/greet")["availableReplicas"], 3);
    b.eval("window.scrollTo(0, 0)");
    b.screenshot(&output_path("console.png"));

    b.click("#edit-close");
    b.wait_for(
        "the dialog to close",
        "!document.getElementById('edit-dialog').open",
        long,
    );
}

#[test]
fn console_deploys_a_registry_image() {
    let reg = virga_testkit::registry::Registry::start(None);
    virga_testkit::registry::push_httpd(&reg, "site:1", "served from the image\n", None);
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(&dir.path().join("data"), &[]);
    let mut b = Browser::launch();
    let long = Duration::from_secs(30);
    let console = p.console_url.clone().expect("the console is on by default");
    b.call("Page.navigate", json!({"url": format!("{console}/ui/")}));
    b.type_into("#login-password", PASSWORD);
    b.click("#login-submit");
    b.wait_for(
        "the deploy form",
        "!!document.getElementById('d-service')",
        long,
    );
    b.type_into("#d-service", "site");
    b.type_into("#d-image", &reg.image("site:1"));
    b.click("#deploy-submit");
    b.wait_for(
        "the deploy confirmation",
        "!document.getElementById('deploy-ok').hidden",
        long,
    );
    b.wait_for("site ready in the list", &row_shows("site", "1 / 1"), long);
    let f: Value = p
        .sys(reqwest::Method::GET, "/system/function/site")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(f["image"], reg.image("site:1").as_str(), "{f}");
    assert!(
        f["imageDigest"].as_str().unwrap().starts_with("sha256:"),
        "{f}"
    );
    let r = p
        .anon(reqwest::Method::GET, "/function/site")
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "served from the image\n");
}
