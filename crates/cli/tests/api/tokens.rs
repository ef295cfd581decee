//! API tokens and the audit log against the real `virga up`: tokens are shown once and kept
//! only as hashes, refused with a 401 that says why (malformed, unknown, expired, revoked at
//! once), bounded by role and namespace, and every change is audited with who made it and
//! without any secret. The CLI's `virga token`, `virga login --token` and `virga audit` too.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use reqwest::blocking::RequestBuilder;
use reqwest::Method;
use serde_json::{json, Value};
use virga_testkit::{virga_bin, Answer, Platform};

use crate::secrets_at_rest::{scan, Needle};

/// A request to `path` with `token` as a bearer token.
fn bearer(p: &Platform, method: Method, path: &str, token: &str) -> RequestBuilder {
    p.anon(method, path).bearer_auth(token)
}

fn answer(rb: RequestBuilder) -> Answer {
    let r = rb.send().unwrap();
    Answer {
        status: r.status().as_u16(),
        text: r.text().unwrap(),
    }
}

/// Create a token as the admin; asserts 201 and returns the answer's JSON.
fn create(p: &Platform, body: Value) -> Value {
    let r = p.send_json(Method::POST, "/system/virga/tokens", body.clone());
    assert_eq!(r.status, 201, "{body}: {}", r.text);
    serde_json::from_str(&r.text).unwrap()
}

fn token_of(created: &Value) -> String {
    created["token"].as_str().unwrap().to_string()
}

/// A deployment body for a function running `cat`.
fn deployment(name: &str) -> Value {
    json!({"service": name, "image": "", "envProcess": "cat"})
}

#[test]
fn tokens_are_shown_once_listed_without_secrets_and_kept_only_as_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut p = Platform::start(&data);
    let before = chrono::Utc::now();
    let created = create(
        &p,
        json!({"name": "ci", "role": "deployer", "namespaces": ["openfaas-fn"], "expiresIn": "720h"}),
    );
    let token = token_of(&created);
    let id = created["id"].as_str().unwrap();
    assert!(token.starts_with(&format!("vg_{id}_")), "{created}");
    assert_eq!(created["role"], "deployer");
    assert_eq!(created["namespaces"], json!(["openfaas-fn"]));
    assert_eq!(created["createdBy"], "admin");
    let expires: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(created["expires"].clone()).unwrap();
    let ahead = expires - before;
    assert!(ahead >= chrono::Duration::hours(720) && ahead < chrono::Duration::hours(721));

    // The secret has 32 bytes of entropy; the list never shows it nor its hash.
    let secret = &token[format!("vg_{id}_").len()..];
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(secret)
        .unwrap();
    assert_eq!(bytes.len(), 32);
    let listed = answer(p.sys(Method::GET, "/system/virga/tokens"));
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert!(!listed.text.contains(secret), "{}", listed.text);
    let list: Vec<Value> = serde_json::from_str(&listed.text).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["name"], "ci");
    assert!(list[0].get("token").is_none() && list[0].get("hash").is_none());

    // The token works, and still does after a restart; its secret is nowhere on disk.
    let r = bearer(&p, Method::POST, "/system/functions", &token).json(&deployment("by-ci"));
    assert_eq!(answer(r).status, 202);
    assert!(p.terminate().success());
    p.restart();
    let r = answer(bearer(&p, Method::GET, "/system/functions", &token));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("by-ci"));
    drop(p);
    let needles = [
        Needle::new("token", token.as_bytes()),
        Needle::new("secret", secret.as_bytes()),
        Needle::new("secret bytes", &bytes),
    ];
    let found = scan(&data, &needles.iter().collect::<Vec<_>>());
    assert!(found.is_empty(), "the token at rest: {found:#?}");
}

#[test]
fn refused_tokens_get_a_401_that_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let get = |token: &str| {
        let r = bearer(&p, Method::GET, "/system/functions", token)
            .send()
            .unwrap();
        let challenge = r.headers().get("www-authenticate").cloned();
        let status = r.status().as_u16();
        (status, r.text().unwrap(), challenge)
    };
    let r = answer(p.anon(Method::GET, "/system/functions"));
    assert_eq!(r.status, 401);

    let (status, text, challenge) = get("not-a-token");
    assert_eq!(status, 401);
    assert!(text.contains("malformed token"), "{text}");
    assert!(challenge.unwrap().to_str().unwrap().starts_with("Bearer"));
    let unknown = format!("vg_{}_{}", "ab".repeat(10), "A".repeat(43));
    let (status, text, _) = get(&unknown);
    assert_eq!(status, 401);
    assert!(text.contains("unknown token"), "{text}");

    // A real token with one character of its secret changed is unknown too.
    let real = token_of(&create(
        &p,
        json!({"name": "v", "role": "viewer", "namespaces": ["openfaas-fn"]}),
    ));
    assert_eq!(get(&real).0, 200);
    let last = if real.ends_with('A') { "B" } else { "A" };
    let forged = format!("{}{last}", &real[..real.len() - 1]);
    let (status, text, _) = get(&forged);
    assert_eq!(status, 401);
    assert!(
        text.contains("unknown token") || text.contains("malformed"),
        "{text}"
    );

    // Expired: good until its time, then refused, saying when it expired.
    let short = create(
        &p,
        json!({"name": "short", "role": "viewer", "namespaces": ["openfaas-fn"], "expiresIn": "3s"}),
    );
    let short_token = token_of(&short);
    assert_eq!(get(&short_token).0, 200);
    assert!(p.eventually(Duration::from_secs(10), || get(&short_token).0 == 401));
    let (_, text, _) = get(&short_token);
    let id = short["id"].as_str().unwrap();
    assert!(text.contains(&format!("token {id} expired at ")), "{text}");

    // Revoked: refused from the answer to the DELETE on.
    let created = create(
        &p,
        json!({"name": "gone", "role": "deployer", "namespaces": ["openfaas-fn"]}),
    );
    let (gone, id) = (token_of(&created), created["id"].as_str().unwrap());
    assert_eq!(get(&gone).0, 200);
    let r = answer(p.sys(Method::DELETE, &format!("/system/virga/tokens/{id}")));
    assert_eq!(r.status, 200, "{}", r.text);
    let (status, text, _) = get(&gone);
    assert_eq!(status, 401);
    assert!(
        text.contains(&format!("token {id} was revoked at ")),
        "{text}"
    );
    let r = answer(p.sys(Method::DELETE, &format!("/system/virga/tokens/{id}")));
    assert_eq!(r.status, 404, "{}", r.text);
}

#[test]
fn roles_bound_what_a_token_does_and_hands_out() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    let ns = json!(["openfaas-fn"]);
    let viewer = token_of(&create(
        &p,
        json!({"name": "viewer", "role": "viewer", "namespaces": ns}),
    ));
    let deployer = token_of(&create(
        &p,
        json!({"name": "deployer", "role": "deployer", "namespaces": ns}),
    ));
    let admin_token = create(&p, json!({"name": "root", "role": "admin"}));
    assert_eq!(admin_token["namespaces"], Value::Null);

    let r = answer(bearer(&p, Method::GET, "/system/functions", &viewer));
    assert_eq!(r.status, 200, "{}", r.text);
    let r = answer(bearer(&p, Method::POST, "/system/functions", &viewer).json(&deployment("f")));
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(
        r.text.contains("token:viewer has role viewer"),
        "{}",
        r.text
    );
    let secret = json!({"name": "s", "value": "v"});
    let r = answer(bearer(&p, Method::POST, "/system/secrets", &viewer).json(&secret));
    assert_eq!(r.status, 403, "{}", r.text);
    let r = answer(bearer(&p, Method::POST, "/system/functions", &deployer).json(&deployment("f")));
    assert_eq!(r.status, 202, "{}", r.text);
    let r = answer(bearer(&p, Method::GET, "/system/virga/audit", &deployer));
    assert_eq!(r.status, 403, "{}", r.text);

    // A deployer hands out at most a deployer in its namespaces.
    let tokens = "/system/virga/tokens";
    let post = |body: Value| answer(bearer(&p, Method::POST, tokens, &deployer).json(&body));
    let r = post(json!({"name": "up", "role": "admin"}));
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(
        r.text.contains("cannot create a token of role admin"),
        "{}",
        r.text
    );
    let r = post(json!({"name": "sub", "role": "viewer", "namespaces": ns}));
    assert_eq!(r.status, 201, "{}", r.text);
    let sub: Value = serde_json::from_str(&r.text).unwrap();
    assert_eq!(sub["createdBy"], "token:deployer");
    // It sees the tokens it could have made, not the admin's admin token.
    let r = answer(bearer(&p, Method::GET, tokens, &deployer));
    let names: Vec<String> = serde_json::from_str::<Vec<Value>>(&r.text)
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["viewer", "deployer", "sub"]);
    let root = format!("{tokens}/{}", admin_token["id"].as_str().unwrap());
    let r = answer(bearer(&p, Method::DELETE, &root, &deployer));
    assert_eq!(r.status, 404, "{}", r.text);
    let r = answer(bearer(
        &p,
        Method::GET,
        "/system/functions",
        &token_of(&admin_token),
    ));
    assert_eq!(r.status, 200, "the admin token was not revoked: {}", r.text);

    // Bad requests change nothing.
    for (body, says) in [
        (
            json!({"name": "x", "role": "root", "namespaces": ns}),
            "unknown role",
        ),
        (
            json!({"name": "x", "role": "viewer", "namespaces": ns, "expiresIn": "soon"}),
            "expiresIn",
        ),
        (
            json!({"name": "", "role": "viewer", "namespaces": ns}),
            "name: must not be empty",
        ),
        (
            json!({"name": "x", "role": "viewer"}),
            "needs the namespaces",
        ),
        (
            json!({"name": "x", "role": "admin", "namespaces": ns}),
            "every namespace",
        ),
    ] {
        let r = p.send_json(Method::POST, tokens, body.clone());
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.text.contains(says), "{body}: {}", r.text);
    }
    let r = p.send_json(
        Method::POST,
        tokens,
        json!({"name": "sub", "role": "viewer", "namespaces": ns}),
    );
    assert_eq!(r.status, 409, "{}", r.text);
    let all: Vec<Value> = p.get_json(tokens).as_array().unwrap().clone();
    assert_eq!(all.len(), 4);
}

#[test]
fn the_audit_log_names_who_changed_what_and_keeps_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = Platform::start(&data);
    let created = create(
        &p,
        json!({"name": "ci", "role": "deployer", "namespaces": ["openfaas-fn"]}),
    );
    let (ci, id) = (token_of(&created), created["id"].as_str().unwrap());
    let value = format!("audit-needle-{}", hex::encode(rand::random::<[u8; 12]>()));
    let secret = json!({"name": "db-pass", "namespace": "openfaas-fn", "value": value});
    let r = answer(bearer(&p, Method::POST, "/system/secrets", &ci).json(&secret));
    assert_eq!(r.status, 201, "{}", r.text);
    let r = answer(bearer(&p, Method::POST, "/system/functions", &ci).json(&deployment("fn1")));
    assert_eq!(r.status, 202, "{}", r.text);
    let r = answer(bearer(&p, Method::GET, "/system/functions", &ci));
    assert_eq!(r.status, 200, "reads are not audited: {}", r.text);
    let r =
        answer(bearer(&p, Method::DELETE, "/system/secrets", &ci).json(&json!({"name": "nope"})));
    assert_eq!(r.status, 404, "{}", r.text);
    let r = answer(p.sys(Method::DELETE, &format!("/system/virga/tokens/{id}")));
    assert_eq!(r.status, 200, "{}", r.text);

    let text = answer(p.sys(Method::GET, "/system/virga/audit")).text;
    assert!(
        !text.contains(&value),
        "the secret's value in the audit: {text}"
    );
    assert!(!text.contains(&ci), "the token in the audit: {text}");
    let log: Vec<Value> = serde_json::from_str(&text).unwrap();
    let row = |e: &Value| {
        (
            e["who"].as_str().unwrap().to_string(),
            e["action"].as_str().unwrap().to_string(),
            e["target"].as_str().unwrap_or("-").to_string(),
            e["status"].as_u64().unwrap(),
        )
    };
    let rows: Vec<_> = log.iter().map(row).collect();
    let want = [
        (
            "admin",
            format!("DELETE /system/virga/tokens/{id}"),
            id.to_string(),
            200,
        ),
        (
            "token:ci",
            "DELETE /system/secrets".into(),
            "nope".into(),
            404,
        ),
        (
            "token:ci",
            "POST /system/functions".into(),
            "fn1".into(),
            202,
        ),
        (
            "token:ci",
            "POST /system/secrets".into(),
            "openfaas-fn/db-pass".into(),
            201,
        ),
        (
            "admin",
            "POST /system/virga/tokens".into(),
            "ci".into(),
            201,
        ),
    ];
    let want: Vec<_> = want
        .into_iter()
        .map(|(w, a, t, s)| (w.to_string(), a, t, s))
        .collect();
    assert_eq!(rows, want);
    let seqs: Vec<u64> = log.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] == w[1] + 1), "{seqs:?}");

    let newest = p.get_json("/system/virga/audit?limit=1");
    assert_eq!(newest.as_array().unwrap().len(), 1);
    assert_eq!(newest[0]["seq"], log[0]["seq"]);
    for bad in ["0", "abc", "10001"] {
        let r = answer(p.sys(Method::GET, &format!("/system/virga/audit?limit={bad}")));
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    drop(p);
    let needle = Needle::new("secret", value.as_bytes());
    let found = scan(&data, &[&needle]);
    assert!(found.is_empty(), "{found:#?}");
}

/// Run the CLI in `dir` with only `env` (plus no developer gateway or password), `stdin`
/// as its input; whether it succeeded and what it printed (stdout, then stderr).
fn run(dir: &Path, env: &[(&str, &str)], args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(virga_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("VIRGA_URL")
        .env_remove("VIRGA_PASSWORD")
        .env_remove("OPENFAAS_PASSWORD")
        .env_remove("VIRGA_TOKEN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn cli_creates_lists_and_revokes_tokens_and_logs_in_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(&dir.path().join("data"));
    let work = dir.path();
    let out = p.cli(
        work,
        &[
            "token",
            "create",
            "--name",
            "cli",
            "--role",
            "deployer",
            "-n",
            "openfaas-fn",
            "--expires",
            "1h",
        ],
    );
    let token = out
        .lines()
        .find(|l| l.starts_with("vg_"))
        .unwrap_or_else(|| panic!("no token in: {out}"))
        .to_string();
    assert!(out.contains("shown only this once"), "{out}");
    let out = p.cli(work, &["token", "list"]);
    let line = out
        .lines()
        .find(|l| l.contains(" cli "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("deployer") && line.contains("openfaas-fn"),
        "{line}"
    );
    assert!(!out.contains(&token[30..]), "{out}");
    let json: Value = serde_json::from_str(&p.cli(
        work,
        &[
            "token", "create", "--name", "other", "--role", "admin", "--json",
        ],
    ))
    .unwrap();
    assert!(json["token"].as_str().unwrap().starts_with("vg_"));

    // Signed in with the token only: no password anywhere.
    let config = dir.path().join("config");
    let env = [
        ("VIRGA_URL", p.url.as_str()),
        ("VIRGA_CONFIG_DIR", config.to_str().unwrap()),
    ];
    let (ok, out) = run(
        work,
        &env,
        &["login", "--token-stdin"],
        &format!("{token}\n"),
    );
    assert!(ok, "{out}");
    assert!(out.contains("Token saved"), "{out}");
    let stored = std::fs::read_to_string(config.join("config.json")).unwrap();
    assert!(stored.contains(&token) && !stored.contains("test-password"));
    let (ok, out) = run(
        work,
        &env,
        &["secret", "create", "from-cli", "--from-literal", "v"],
        "",
    );
    assert!(ok, "{out}");
    let (ok, out) = run(work, &env, &["audit"], "");
    assert!(
        !ok && out.contains("403"),
        "a deployer reads no audit log: {out}"
    );
    // VIRGA_TOKEN wins over the stored token.
    let garbage = [env[0], env[1], ("VIRGA_TOKEN", "garbage")];
    let (ok, out) = run(work, &garbage, &["list"], "");
    assert!(!ok && out.contains("malformed token"), "{out}");

    let id = token.split('_').nth(1).unwrap();
    let out = p.cli(work, &["token", "revoke", id]);
    assert!(out.contains("Revoked token cli"), "{out}");
    let (ok, out) = run(work, &env, &["list"], "");
    assert!(!ok && out.contains("was revoked at"), "{out}");
    assert!(out.contains("virga login --token-stdin"), "{out}");

    let out = p.cli(work, &["audit", "--limit", "3"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0].starts_with("Time") && lines[0].contains("Target"),
        "{out}"
    );
    assert!(
        lines[1].contains("DELETE /system/virga/tokens/") && lines[1].contains(id),
        "{out}"
    );
    assert!(
        lines[2].contains("token:cli") && lines[2].contains("POST /system/secrets"),
        "{out}"
    );
}

#[test]
fn namespaces_bound_tokens_and_a_deleted_one_leaves_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = Platform::start(dir.path());
    for ns in ["team-a", "team-b"] {
        let r = p.send_json(Method::POST, "/system/namespace/", json!({"name": ns}));
        assert!(r.status == 201 || r.status == 200, "{ns}: {}", r.text);
    }
    let r = p.send_json(
        Method::POST,
        "/system/virga/tokens",
        json!({"name": "z", "role": "viewer", "namespaces": ["team-z"]}),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.text.contains("team-z"), "{}", r.text);
    let only_a = token_of(&create(
        &p,
        json!({"name": "a", "role": "deployer", "namespaces": ["team-a"]}),
    ));
    let a_and_b = token_of(&create(
        &p,
        json!({"name": "ab", "role": "deployer", "namespaces": ["team-a", "team-b"]}),
    ));

    let mut f = deployment("fa");
    f["namespace"] = json!("team-a");
    let r = answer(bearer(&p, Method::POST, "/system/functions", &only_a).json(&f));
    assert_eq!(r.status, 202, "{}", r.text);
    let r = answer(bearer(&p, Method::POST, "/system/functions", &only_a).json(&deployment("fd")));
    assert_eq!(
        r.status, 403,
        "the default namespace is not the token's: {}",
        r.text
    );
    assert!(r.text.contains("\"openfaas-fn\""), "{}", r.text);
    let other = "/system/functions?namespace=team-b";
    assert_eq!(answer(bearer(&p, Method::GET, other, &only_a)).status, 403);
    assert_eq!(answer(bearer(&p, Method::GET, other, &a_and_b)).status, 200);
    let secret = json!({"name": "db", "namespace": "team-b", "value": "v"});
    let r = answer(bearer(&p, Method::POST, "/system/secrets", &only_a).json(&secret));
    assert_eq!(r.status, 403, "{}", r.text);

    // Tokens it makes stay within its namespaces.
    let tokens = "/system/virga/tokens";
    let post = |body: Value| answer(bearer(&p, Method::POST, tokens, &only_a).json(&body));
    let r = post(json!({"name": "to-b", "role": "viewer", "namespaces": ["team-b"]}));
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("namespace team-b"), "{}", r.text);
    let r = post(json!({"name": "in-a", "role": "viewer", "namespaces": ["team-a"]}));
    assert_eq!(r.status, 201, "{}", r.text);
    let listed = answer(bearer(&p, Method::GET, tokens, &only_a)).text;
    let names: Vec<String> = serde_json::from_str::<Vec<Value>>(&listed)
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a", "in-a"], "not ab, which also has team-b");

    // Deleting team-a takes it from every token: `a` is revoked, `ab` keeps team-b, and a
    // team-a made again is not open to them.
    let r = answer(p.sys(Method::DELETE, "/system/namespace/team-a?cascade=true"));
    assert_eq!(r.status, 200, "{}", r.text);
    let r = answer(bearer(
        &p,
        Method::GET,
        "/system/functions?namespace=team-b",
        &only_a,
    ));
    assert_eq!(r.status, 401, "{}", r.text);
    assert!(r.text.contains("was revoked at"), "{}", r.text);
    let r = p.send_json(
        Method::POST,
        "/system/namespace/",
        json!({"name": "team-a"}),
    );
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
    let again = "/system/functions?namespace=team-a";
    assert_eq!(answer(bearer(&p, Method::GET, again, &a_and_b)).status, 403);
    assert_eq!(answer(bearer(&p, Method::GET, other, &a_and_b)).status, 200);
    let ab = p.get_json(tokens);
    let ab = ab
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ab")
        .unwrap();
    assert_eq!(ab["namespaces"], json!(["team-b"]));

    let log = p.get_json("/system/virga/audit");
    let targets: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["who"] == "token:a")
        .map(|e| e["target"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(targets, ["in-a", "to-b", "team-b/db", "fd", "team-a/fa"]);
}
