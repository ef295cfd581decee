//! The console's own origin: it serves the console and the API routes the console uses, never
//! a function's answer, and a hostile function page loaded in the browser where the console is
//! signed in gets nothing of it (headless Chromium, the real `virga up`).

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use virga_testkit::browser::Browser;
use virga_testkit::{Platform, PASSWORD};

#[test]
fn the_console_has_an_origin_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = Platform::start(&data);
    let console = p.console_url.clone().expect("the console is on by default");
    assert_ne!(console, p.url);
    let show_auth = virga_testkit::script(
        dir.path(),
        "show-auth.sh",
        "printf '%s' \"${Http_Authorization:-none}\"",
    );
    p.deploy_process("show-auth", &show_auth, json!({}));
    let r = p
        .anon(Method::GET, "/function/show-auth")
        .header("authorization", "Bearer fn-token")
        .send()
        .unwrap();
    assert_eq!(r.text().unwrap(), "Bearer fn-token", "the API passes it on");

    // No function answers on the console's origin, under any method or path form.
    let http = &p.http;
    for (method, path) in [
        (Method::GET, "/function/show-auth"),
        (Method::POST, "/function/show-auth/x?y=1"),
        (Method::GET, "/function/show-auth.openfaas-fn"),
        (Method::POST, "/async-function/show-auth"),
    ] {
        let r = http
            .request(method.clone(), format!("{console}{path}"))
            .basic_auth("admin", Some(PASSWORD))
            .send()
            .unwrap();
        assert_eq!(r.status(), 404, "{method} {path}");
        assert!(r.text().unwrap().contains("API address"));
    }
    // It serves what the console uses.
    let get = |path: &str| {
        http.get(format!("{console}{path}"))
            .basic_auth("admin", Some(PASSWORD))
            .send()
            .unwrap()
    };
    assert_eq!(get("/healthz").status(), 200);
    assert_eq!(get("/system/info").status(), 200);
    assert!(get("/metrics").text().unwrap().contains("gateway_"));
    // The console calls functions through an authenticated route; the admin's credentials
    // are not passed on, and the answer is sandboxed.
    let r = http
        .post(format!("{console}/system/virga/invoke/show-auth"))
        .basic_auth("admin", Some(PASSWORD))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-security-policy"], "sandbox");
    assert!(r.headers().contains_key("x-call-id"));
    assert_eq!(r.text().unwrap(), "none");
    let r = http
        .post(format!("{console}/system/virga/invoke/show-auth"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);

    // The API's /ui sends browsers to the console.
    let no_redirect = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirect.get(format!("{}/ui/", p.url)).send().unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(r.headers()["location"], format!("{console}/ui/").as_str());
    drop(p);

    // `--console-listen off`: no console anywhere.
    let p = Platform::start_with(&data, &["--console-listen", "off"]);
    assert_eq!(p.console_url, None);
    let r = p.anon(Method::GET, "/ui/").send().unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("--console-listen"));
}

/// A function page that tries everything it can to get at the console and the API, and puts
/// what it got in its title.
fn attack_page(console: &str) -> String {
    let script = r#"
document.title = 'ran';
(async () => {
  const r = {};
  const grab = (s) => { const o = {}; for (let i = 0; i < s.length; i++) o[s.key(i)] = s.getItem(s.key(i)); return o; };
  try { r.session = grab(sessionStorage); } catch (e) { r.session = 'error: ' + e.name; }
  try { r.local = grab(localStorage); } catch (e) { r.local = 'error: ' + e.name; }
  r.cookie = document.cookie;
  const call = async (url, init) => {
    try {
      const x = await fetch(url, Object.assign({ credentials: 'include' }, init || {}));
      return x.status + ' ' + (await x.text()).slice(0, 200);
    } catch (e) { return 'error: ' + e.name; }
  };
  const deploy = (name) => ({ method: 'POST', body: JSON.stringify({ service: name, image: '', envProcess: 'cat' }) });
  r.apiSecrets = await call('/system/secrets');
  r.apiDeploy = await call('/system/functions', deploy('pwned-api'));
  r.consoleSecrets = await call(CONSOLE + '/system/secrets');
  r.consoleDeploy = await call(CONSOLE + '/system/functions', Object.assign({ mode: 'no-cors' }, deploy('pwned-console')));
  r.consoleInvoke = await call(CONSOLE + '/system/virga/invoke/victim');
  const f = document.createElement('iframe');
  f.src = CONSOLE + '/ui/';
  document.body.append(f);
  await Promise.race([new Promise((ok) => { f.onload = ok; }), new Promise((ok) => setTimeout(ok, 3000))]);
  try { r.frame = f.contentWindow.sessionStorage.getItem('virga.auth'); } catch (e) { r.frame = 'error: ' + e.name; }
  document.title = 'done:' + JSON.stringify(r);
})();
"#;
    format!(
        "<!doctype html><html><head><title>evil</title></head><body><p id=\"out\">idle</p>\
         <script>const CONSOLE = {console:?};{script}</script></body></html>"
    )
}

#[test]
fn a_function_page_cannot_reach_the_signed_in_console() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(&dir.path().join("data"));
    let console = p.console_url.clone().expect("the console is on by default");
    p.create_secret("db-password", "hunter2");
    p.deploy_process("victim", "cat", json!({}));
    let page = dir.path().join("page.html");
    std::fs::write(&page, attack_page(&console)).unwrap();
    let serve_page = format!("cat {}", page.display());
    let html = json!({"content_type": "text/html; charset=utf-8"});
    // One attacker as deployed by default, one that turned the sandbox off for itself.
    p.deploy_process("evil", &serve_page, json!({"envVars": html}));
    p.deploy_process(
        "evil-open",
        &serve_page,
        json!({"envVars": html, "annotations": {"virga.http.sandbox": "false"}}),
    );
    let long = Duration::from_secs(30);

    // Sign in to the console.
    let mut b = Browser::launch();
    b.call("Page.navigate", json!({"url": format!("{console}/ui/")}));
    b.type_into("#login-password", PASSWORD);
    b.click("#login-submit");
    b.wait_for(
        "the signed-in console",
        "!document.getElementById('app').hidden && !!document.querySelector('tr[data-name=\"victim\"]')",
        long,
    );
    assert_eq!(
        b.eval("sessionStorage.getItem('virga.auth') !== null"),
        true,
        "the console holds credentials worth stealing"
    );

    // The same tab opens the unsandboxed attacker: its script runs and gets nothing.
    b.call(
        "Page.navigate",
        json!({"url": format!("{}/function/evil-open", p.url)}),
    );
    let title = b.wait_for(
        "the attack's report",
        "location.pathname === '/function/evil-open' && document.title.startsWith('done:') && \
         document.title",
        long,
    );
    let report: Value = serde_json::from_str(&title.as_str().unwrap()["done:".len()..]).unwrap();
    eprintln!("what the attacker got: {report:#}");
    assert_eq!(
        report["session"],
        json!({}),
        "no console credentials in storage"
    );
    assert_eq!(report["local"], json!({}));
    assert_eq!(report["cookie"], "");
    for key in ["apiSecrets", "apiDeploy"] {
        let got = report[key].as_str().unwrap();
        assert!(got.starts_with("401 "), "{key}: {got}");
    }
    for key in ["consoleSecrets", "consoleInvoke", "frame"] {
        let got = report[key].as_str().unwrap();
        assert!(got.starts_with("error: "), "{key}: {got}");
    }
    let text = serde_json::to_string(&report).unwrap();
    assert!(!text.contains("hunter2") && !text.contains("db-password"));
    let names: Vec<Value> = p.get_json("/system/functions").as_array().unwrap().clone();
    let names: Vec<&str> = names.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert!(!names.iter().any(|n| n.starts_with("pwned")), "{names:?}");

    // The sandboxed attacker's script does not run at all.
    b.call(
        "Page.navigate",
        json!({"url": format!("{}/function/evil", p.url)}),
    );
    b.wait_for(
        "the sandboxed page",
        "location.pathname === '/function/evil' && document.readyState === 'complete' && \
         !!document.getElementById('out')",
        long,
    );
    assert_eq!(b.eval("document.title"), "evil");
    assert_eq!(b.eval("document.getElementById('out').textContent"), "idle");

    // Back on the console the session is intact.
    b.call("Page.navigate", json!({"url": format!("{console}/ui/")}));
    b.wait_for(
        "the console, still signed in",
        "(() => { const a = document.getElementById('app'); return !!a && !a.hidden; })()",
        long,
    );
}
