//! OpenFaaS parity found with the real faas-cli and templates: how commands are split, what
//! a command-only function's working directory looks like, and the errors a user meets.

mod common;

use common::Platform;

/// `fprocess` is split with the shell's quoting rules: `sh -c 'a; b'` runs both commands
/// (OpenFaaS's whitespace split would break it), and a value without quotes splits as before.
#[test]
fn fprocess_is_split_with_shell_quoting() {
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start(data.path());
    p.deploy_process("both", "sh -c 'echo a; echo b'", serde_json::json!({}));
    p.deploy_process("words", "echo one  two", serde_json::json!({}));
    p.deploy_process("quoted", r#"printf "%s|" "x y" z"#, serde_json::json!({}));
    assert_eq!(p.invoke("both", "").text().unwrap(), "a\nb\n");
    assert_eq!(p.invoke("words", "").text().unwrap(), "one two\n");
    assert_eq!(p.invoke("quoted", "").text().unwrap(), "x y|z|");
}

/// A command-only function (no bundle) runs in a readable, empty /home/app, and a program
/// that does not exist is reported as not found, in a sandbox as OpenFaaS images would.
#[test]
fn command_only_functions_get_a_readable_home_and_clear_errors() {
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start_runc(data.path(), &[]);
    p.deploy_process("where", "sh -c 'pwd; ls -a .'", serde_json::json!({}));
    p.deploy_process("missing", "no-such-program --flag", serde_json::json!({}));
    let r = p.invoke("where", "");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().unwrap(), "/home/app\n.\n..\n");
    let r = p.invoke("missing", "");
    assert_eq!(r.status(), 500);
    let text = r.text().unwrap();
    assert!(
        text.contains("command not found") && text.contains("no-such-program"),
        "{text}"
    );
}

/// `lang: node` is OpenFaaS's classic node template: `(context, callback)` handlers (or ones
/// returning a promise) get the body as a string; an `(event, context)` handler deployed with
/// it gets an error naming the template it needs; node18/node20/node22 are the HTTP one.
#[test]
fn classic_node_handlers_and_the_node20_template() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let p = Platform::start(data.path());
    let handlers = [
        ("cb", "node", "module.exports = (context, callback) => {\n  callback(undefined, { got: context })\n}\n"),
        ("promised", "node", "module.exports = async (context) => `len=${context.length}`\n"),
        ("misplaced", "node", "module.exports = async (event, context) => context.status(200).succeed('hi')\n"),
        ("http18", "node18", "module.exports = async (event, context) => context.status(201).succeed({ body: event.body })\n"),
    ];
    for (name, lang, code) in handlers {
        p.cli(dir, &["new", name, "--lang", lang]);
        std::fs::write(dir.join(name).join("handler.js"), code).unwrap();
    }
    p.cli(dir, &["deploy"]);
    assert_eq!(p.invoke("cb", "abc").text().unwrap(), "{\"got\":\"abc\"}\n");
    assert_eq!(p.invoke("promised", "abcd").text().unwrap(), "len=4");
    let r = p.invoke("misplaced", "x");
    assert_eq!(r.status(), 500);
    let text = r.text().unwrap();
    assert!(text.contains("lang: node20"), "{text}");
    let r = p
        .anon(reqwest::Method::POST, "/function/http18")
        .header("Content-Type", "application/json")
        .body("{\"a\":1}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.json::<serde_json::Value>().unwrap(),
        serde_json::json!({"body": {"a": 1}})
    );
}

/// The node20 runtime reads requests as the node20 template's Express parsers do: forms and
/// query strings with arrays and nesting, no Content-Type as text/plain, binary bodies as
/// Buffers (never decoded as text), and RAW_BODY=true gives a Buffer for every body.
#[test]
fn node20_reads_bodies_and_queries_as_express_does() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let p = Platform::start(data.path());
    let report = "module.exports = async (event, context) => {\n  if (event.query.echo) return event.body\n  return { buffer: Buffer.isBuffer(event.body), body: Buffer.isBuffer(event.body) ? event.body.toString('hex') : event.body, query: event.query, type: event.headers['content-type'] }\n}\n";
    for name in ["n20", "raw"] {
        p.cli(dir, &["new", name, "--lang", "node20"]);
        std::fs::write(dir.join(name).join("handler.js"), report).unwrap();
    }
    let stack = std::fs::read_to_string(dir.join("stack.yaml")).unwrap()
        + "    environment:\n      RAW_BODY: \"true\"\n";
    std::fs::write(dir.join("stack.yaml"), stack).unwrap();
    p.cli(dir, &["deploy"]);
    let call = |name: &str, query: &str, ctype: Option<&str>, body: Vec<u8>| {
        let mut req = p
            .anon(reqwest::Method::POST, &format!("/function/{name}?{query}"))
            .body(body);
        if let Some(t) = ctype {
            req = req.header("Content-Type", t);
        }
        req.send().unwrap()
    };
    let json = |r: reqwest::blocking::Response| r.json::<serde_json::Value>().unwrap();
    let form = json(call(
        "n20",
        "x=1&x=2&y[z]=3&w[]=a",
        Some("application/x-www-form-urlencoded"),
        b"a=1&a=2&b[c]=3&s=hello+world%21".to_vec(),
    ));
    assert_eq!(
        form["body"],
        serde_json::json!({"a": ["1", "2"], "b": {"c": "3"}, "s": "hello world!"})
    );
    assert_eq!(
        form["query"],
        serde_json::json!({"x": ["1", "2"], "y": {"z": "3"}, "w": ["a"]})
    );
    let plain = json(call("n20", "", None, b"just text".to_vec()));
    assert_eq!(plain["type"], "text/plain");
    assert_eq!(plain["body"], "just text");
    let binary = json(call(
        "n20",
        "",
        Some("application/octet-stream"),
        vec![0xff, 0xfe, 0x00],
    ));
    assert_eq!(
        (binary["buffer"].clone(), binary["body"].clone()),
        (true.into(), "fffe00".into())
    );
    let echoed = call(
        "n20",
        "echo=1",
        Some("application/octet-stream"),
        vec![0xff, 0xfe],
    );
    assert_eq!(echoed.bytes().unwrap().as_ref(), [0xff, 0xfe]);
    let raw = json(call(
        "raw",
        "",
        Some("application/json"),
        b"{\"a\":1}".to_vec(),
    ));
    assert_eq!(raw["buffer"], true, "{raw}");
    assert_eq!(raw["body"], hex::encode(b"{\"a\":1}"));
}

/// The python3-http runtime answers as the python-flask-template does: a body that is not
/// JSON defaults to text/html, `event.query` has Flask's `get` and `getlist` (a missing key
/// is a 400, not a 500), and `context.hostname` is the instance's name, pooled or not.
#[test]
fn python3_http_matches_the_flask_template() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let p = Platform::start_runc(data.path(), &["--warm-pool", "1"]);
    let code = "def handle(event, context):\n    if event.query.get('strict'):\n        return event.query['missing']\n    if event.query.get('text'):\n        return {'body': 'hi <b>there</b>'}\n    return {'body': {'x': event.query.getlist('x'), 'n': event.query.get('n', type=int), 'none': event.query.get('nope'), 'host': context.hostname}}\n";
    p.cli(dir, &["new", "hp", "--lang", "python3-http"]);
    std::fs::write(dir.join("hp/handler.py"), code).unwrap();
    p.cli(dir, &["deploy"]);
    let r = p
        .anon(reqwest::Method::GET, "/function/hp?text=1")
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(r.text().unwrap(), "hi <b>there</b>");
    let r = p
        .anon(reqwest::Method::GET, "/function/hp?x=1&x=2&n=7")
        .send()
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/json");
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(
        (v["x"].clone(), v["n"].clone(), v["none"].clone()),
        (
            serde_json::json!(["1", "2"]),
            7.into(),
            serde_json::Value::Null
        )
    );
    let host = v["host"].as_str().unwrap().to_string();
    assert!(host.starts_with("hp-"), "{v}");
    let r = p
        .anon(reqwest::Method::GET, "/function/hp?strict=1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("missing"));
}
