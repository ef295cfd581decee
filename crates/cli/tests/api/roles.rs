//! Every `/system` route against every role, in the token's namespace and in another one:
//! what the role allows is never a 401 or 403, what it does not is a 403, and no denied
//! request changes anything.

use reqwest::Method;
use serde_json::{json, Value};
use virga_testkit::Platform;

/// What a route needs, from the least to the most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    Read,
    Invoke,
    Deploy,
    Admin,
}

/// `(role, its rank)`: a role may do every need up to its rank.
const ROLES: [(&str, Need); 4] = [
    ("viewer", Need::Read),
    ("invoker", Need::Invoke),
    ("deployer", Need::Deploy),
    ("admin", Need::Admin),
];

fn token(p: &Platform, name: &str, role: &str, ns: &str) -> String {
    let mut body = json!({"name": name, "role": role});
    if role != "admin" {
        body["namespaces"] = json!([ns]);
    }
    let r = p.send_json(Method::POST, "/system/virga/tokens", body);
    assert_eq!(r.status, 201, "{}", r.text);
    let v: Value = serde_json::from_str(&r.text).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// The routes, for namespace `ns`, each with what it needs; `n` makes names unique.
fn routes(ns: &str, n: usize) -> Vec<(Method, String, Option<Value>, Need)> {
    let fun = format!("f-{ns}");
    vec![
        (
            Method::GET,
            format!("/system/functions?namespace={ns}"),
            None,
            Need::Read,
        ),
        (
            Method::GET,
            format!("/system/function/{fun}?namespace={ns}"),
            None,
            Need::Read,
        ),
        (
            Method::GET,
            format!("/system/function/{fun}.{ns}"),
            None,
            Need::Read,
        ),
        (
            Method::GET,
            format!("/system/secrets?namespace={ns}"),
            None,
            Need::Read,
        ),
        (
            Method::GET,
            format!("/system/logs?name={fun}&namespace={ns}"),
            None,
            Need::Read,
        ),
        (
            Method::GET,
            format!("/system/namespace/{ns}"),
            None,
            Need::Read,
        ),
        (
            Method::GET,
            format!("/system/virga/calls?namespace={ns}"),
            None,
            Need::Read,
        ),
        (
            Method::GET,
            format!("/system/virga/dead-letters?namespace={ns}"),
            None,
            Need::Read,
        ),
        (
            Method::POST,
            format!("/system/virga/invoke/{fun}.{ns}"),
            None,
            Need::Invoke,
        ),
        (
            Method::POST,
            "/system/functions".into(),
            Some(json!({"service": format!("new{n}"), "envProcess": "cat", "namespace": ns})),
            Need::Deploy,
        ),
        (
            Method::PUT,
            "/system/functions".into(),
            Some(json!({"service": fun, "envProcess": "cat", "namespace": ns})),
            Need::Deploy,
        ),
        (
            Method::POST,
            format!("/system/scale-function/{fun}"),
            Some(json!({"serviceName": fun, "namespace": ns, "replicas": 1})),
            Need::Deploy,
        ),
        (
            Method::POST,
            "/system/secrets".into(),
            Some(json!({"name": format!("new{n}"), "value": "x", "namespace": ns})),
            Need::Deploy,
        ),
        (
            Method::DELETE,
            "/system/secrets".into(),
            Some(json!({"name": "absent", "namespace": ns})),
            Need::Deploy,
        ),
        (
            Method::DELETE,
            "/system/functions".into(),
            Some(json!({"functionName": "absent", "namespace": ns})),
            Need::Deploy,
        ),
        (
            Method::PUT,
            format!("/system/namespace/{ns}"),
            Some(json!({"labels": {"team": ns}})),
            Need::Admin,
        ),
        (
            Method::DELETE,
            format!("/system/namespace/{ns}-absent"),
            None,
            Need::Admin,
        ),
    ]
}

/// Routes of no one namespace.
fn global_routes(n: usize) -> Vec<(Method, String, Option<Value>, Need)> {
    vec![
        (Method::GET, "/system/info".into(), None, Need::Read),
        (Method::GET, "/system/namespaces".into(), None, Need::Read),
        (Method::GET, "/system/virga/queues".into(), None, Need::Read),
        (Method::GET, "/system/virga/calls".into(), None, Need::Read),
        (Method::GET, "/system/virga/tokens".into(), None, Need::Read),
        (
            Method::POST,
            "/system/namespace/".into(),
            Some(json!({"name": format!("made{n}")})),
            Need::Admin,
        ),
        (
            Method::GET,
            "/system/virga/images".into(),
            None,
            Need::Admin,
        ),
        (
            Method::DELETE,
            "/system/virga/dead-letters".into(),
            None,
            Need::Admin,
        ),
        (
            Method::POST,
            "/system/alert".into(),
            Some(json!({"status": "firing", "alerts": []})),
            Need::Admin,
        ),
        (Method::GET, "/system/virga/audit".into(), None, Need::Admin),
    ]
}

fn send(p: &Platform, bearer: &str, m: &Method, path: &str, body: &Option<Value>) -> (u16, String) {
    let mut r = p
        .http
        .request(m.clone(), format!("{}{path}", p.url))
        .bearer_auth(bearer);
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

/// What both namespaces hold, to see that nothing denied changed it.
fn snapshot(p: &Platform) -> Value {
    let mut all = json!({});
    for ns in ["team-a", "team-b"] {
        let fns = p.get_json(&format!("/system/functions?namespace={ns}"));
        let mut names: Vec<String> = fns
            .as_array()
            .unwrap()
            .iter()
            .map(|f| format!("{}={}", f["name"], f["replicas"]))
            .collect();
        names.sort();
        all[ns] = json!({
            "functions": names,
            "secrets": p.get_json(&format!("/system/secrets?namespace={ns}")),
            "namespace": p.get_json(&format!("/system/namespace/{ns}")),
        });
    }
    all["namespaces"] = p.get_json("/system/namespaces");
    all
}

#[test]
fn every_route_allows_its_roles_in_their_namespaces_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    for ns in ["team-a", "team-b"] {
        let r = p.send_json(Method::POST, "/system/namespace/", json!({"name": ns}));
        assert_eq!(r.status, 201, "{}", r.text);
        p.deploy_process(&format!("f-{ns}"), "cat", json!({"namespace": ns}));
        p.create_secret_in("s", ns, ns);
    }
    let mut n = 0;
    let mut wrong = Vec::new();
    for (role, rank) in ROLES {
        let t = token(&p, &format!("t-{role}"), role, "team-a");
        for ns in ["team-a", "team-b"] {
            let before = snapshot(&p);
            let mut denied_here = 0;
            let scoped = routes(ns, n).into_iter().map(|r| (r, true));
            let global = global_routes(n).into_iter().map(|r| (r, false));
            for ((m, path, body, need), namespaced) in scoped.chain(global) {
                n += 1;
                let in_scope = role == "admin" || ns == "team-a" || !namespaced;
                let allowed = need <= rank && in_scope;
                let (status, text) = send(&p, &t, &m, &path, &body);
                let ok = if allowed {
                    status != 401 && status != 403
                } else {
                    status == 403
                };
                if !ok {
                    wrong.push(format!("{role} {m} {path}: {status} {text}"));
                }
                if !allowed {
                    denied_here += 1;
                }
            }
            // A pass with denials only must leave everything as it was.
            if rank < Need::Deploy || ns == "team-b" && role != "admin" {
                assert_eq!(snapshot(&p), before, "{role} in {ns} changed something");
            }
            assert!(
                role == "admin" || denied_here > 0,
                "{role} in {ns} was denied nothing"
            );
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // No credentials, or a bad token: 401 everywhere.
    for (m, path, body, _) in routes("team-a", 0).into_iter().chain(global_routes(0)) {
        let (status, text) = send(&p, "vg_nope_nope", &m, &path, &body);
        assert_eq!(status, 401, "{m} {path}: {text}");
        let r = p.anon(m.clone(), &path).send().unwrap();
        assert_eq!(r.status(), 401, "{m} {path} without credentials");
    }
}

#[test]
fn private_functions_need_an_invoker_of_their_namespace_and_never_see_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    for ns in ["team-a", "team-b"] {
        let r = p.send_json(Method::POST, "/system/namespace/", json!({"name": ns}));
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let show = virga_testkit::script(dir.path(), "show.sh", "echo \"auth=[$Http_Authorization]\"");
    p.deploy_process(
        "vault",
        &show,
        json!({"namespace": "team-a", "annotations": {"virga.private": "true"}}),
    );
    p.deploy_process("open", &show, json!({"namespace": "team-a"}));
    let invoker = token(&p, "inv-a", "invoker", "team-a");
    let viewer = token(&p, "view-a", "viewer", "team-a");
    let other = token(&p, "inv-b", "invoker", "team-b");
    let call = |path: &str, bearer: Option<&str>| {
        let mut r = p.anon(Method::POST, path).body("x");
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        let r = r.send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    for path in ["/function/vault.team-a", "/async-function/vault.team-a"] {
        assert_eq!(call(path, None).0, 401, "{path} without credentials");
        assert_eq!(call(path, Some("vg_nope_nope")).0, 401, "{path} bad token");
        let (status, text) = call(path, Some(&viewer));
        assert_eq!(status, 403, "{path} viewer: {text}");
        let (status, text) = call(path, Some(&other));
        assert_eq!(status, 403, "{path} another namespace's invoker: {text}");
        assert!(text.contains("team-a"), "{text}");
    }
    // The invoker gets through, and the function never sees the platform's credentials.
    let (status, text) = call("/function/vault.team-a", Some(&invoker));
    assert_eq!((status, text.trim()), (200, "auth=[]"));
    assert_eq!(call("/async-function/vault.team-a", Some(&invoker)).0, 202);
    let r = p
        .sys(Method::POST, "/function/vault.team-a")
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "the admin may call it");
    // A public function is public: no credentials needed, its caller's header passes on.
    assert_eq!(call("/function/open.team-a", None).0, 200);
    let (status, text) = call("/function/open.team-a", Some("mine"));
    assert_eq!((status, text.trim()), (200, "auth=[Bearer mine]"));
}
