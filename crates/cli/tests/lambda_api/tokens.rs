//! Access-key tokens through boto3: a token made with `accessKey` signs Lambda API calls as
//! the key pair (its id, its secret), acting only in its namespaces and within its role;
//! other tokens, and revoked ones, are unrecognised keys.

use reqwest::Method;
use serde_json::{json, Value};
use virga_testkit::{boto3, Platform};

/// Create a token as the admin; its id and secret access key.
fn key(p: &Platform, body: Value) -> (String, String) {
    let r = p.send_json(Method::POST, "/system/virga/tokens", body.clone());
    assert_eq!(r.status, 201, "{body}: {}", r.text);
    let v: Value = serde_json::from_str(&r.text).unwrap();
    let id = v["id"].as_str().unwrap().to_string();
    let token = v["token"].as_str().unwrap();
    let secret = token
        .strip_prefix(&format!("vg_{id}_"))
        .unwrap()
        .to_string();
    (id, secret)
}

const CALLS: &str = r#"
out["list"] = sorted(f["FunctionName"] for f in c.list_functions()["Functions"])
out["invoke"] = err(lambda: c.invoke(FunctionName="echo", Payload=b'{"a": 1}'))
if out["invoke"] is None:
    out["invoke"] = payload(c.invoke(FunctionName="echo", Payload=b'{"a": 1}'))
out["get"] = err(lambda: c.get_function(FunctionName="echo"))
out["get_other"] = err(lambda: c.get_function(FunctionName="other.team-a"))
out["invoke_other"] = err(lambda: c.invoke(FunctionName="other.team-a", Payload=b"{}"))
"#;

#[test]
fn access_key_tokens_sign_lambda_calls_within_their_role_and_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let p = Platform::start(&data);
    let r = p.send_json(
        Method::POST,
        "/system/namespace/",
        json!({"name": "team-a"}),
    );
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
    p.deploy_process("echo", "cat", json!({}));
    p.deploy_process("other", "cat", json!({"namespace": "team-a"}));
    let ns = json!(["openfaas-fn"]);
    let (invoker, secret) = key(
        &p,
        json!({"name": "inv", "role": "invoker", "namespaces": ns, "accessKey": true}),
    );
    let run = |id: &str, secret: &str, body: &str| boto3::run(dir.path(), &p.url, id, secret, body);

    let out = run(&invoker, &secret, CALLS);
    assert_eq!(out["invoke"], "{\"a\": 1}", "{out}");
    assert_eq!(out["list"], json!(["echo"]), "not team-a's function: {out}");
    assert_eq!(out["get"], Value::Null, "{out}");
    for k in ["get_other", "invoke_other"] {
        assert_eq!(out[k]["code"], "AccessDeniedException", "{k}: {out}");
    }
    // A key of team-a's neither sees nor calls the default namespace's function.
    let (team, team_secret) = key(
        &p,
        json!({"name": "team", "role": "invoker", "namespaces": ["team-a"], "accessKey": true}),
    );
    let out = run(&team, &team_secret, CALLS);
    assert_eq!(out["list"], json!(["other.team-a"]), "{out}");
    assert_eq!(out["get_other"], Value::Null, "{out}");
    assert_eq!(out["invoke_other"], Value::Null, "{out}");
    for k in ["invoke", "get"] {
        assert_eq!(out[k]["code"], "AccessDeniedException", "{k}: {out}");
        assert_eq!(out[k]["status"], 403, "{k}: {out}");
    }
    let msg = out["invoke"]["message"].as_str().unwrap();
    assert!(
        msg.contains("token:team may not act in namespace \"openfaas-fn\""),
        "{msg}"
    );

    // A viewer reads but does not invoke.
    let (viewer, viewer_secret) = key(
        &p,
        json!({"name": "view", "role": "viewer", "namespaces": ns, "accessKey": true}),
    );
    let out = run(
        &viewer,
        &viewer_secret,
        r#"
out["get"] = c.get_function(FunctionName="echo")["Configuration"]["FunctionName"]
out["invoke"] = err(lambda: c.invoke(FunctionName="echo", Payload=b"{}"))
"#,
    );
    assert_eq!(out["get"], "echo", "{out}");
    assert_eq!(out["invoke"]["code"], "AccessDeniedException", "{out}");

    // A token that is no access key, a wrong secret and a revoked key are unrecognised.
    let (plain, plain_secret) = key(&p, json!({"name": "plain", "role": "admin"}));
    let probe = r#"out["e"] = err(lambda: c.list_functions())"#;
    let out = run(&plain, &plain_secret, probe);
    assert_eq!(out["e"]["code"], "UnrecognizedClientException", "{out}");
    let out = run(&invoker, &viewer_secret, probe);
    assert_eq!(out["e"]["code"], "InvalidSignatureException", "{out}");
    let r = p
        .sys(Method::DELETE, &format!("/system/virga/tokens/{invoker}"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = run(&invoker, &secret, probe);
    assert_eq!(out["e"]["code"], "UnrecognizedClientException", "{out}");
    drop(p);

    // Sealed, not in plain text: the secret's text is in no file of the data directory.
    let mut todo = vec![data];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                for s in [&secret, &viewer_secret, &team_secret] {
                    let found = bytes.windows(s.len()).any(|w| w == s.as_bytes());
                    assert!(!found, "a secret access key in {}", path.display());
                }
            }
        }
    }
}
