//! OpenFaaS parity found with the real faas-cli and templates: how commands are split, what
//! a command-only function's working directory looks like, and the errors a user meets.

use virga_testkit::Platform;

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

/// Writes `files` (path, contents) under `root`.
fn write_tree(root: &std::path::Path, files: &[(&str, &str)]) {
    for (rel, body) in files {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
}

/// A wheel of the pure-Python package `tinyweb` (greet(name)), built with the standard library.
fn tinyweb_wheel(path: &std::path::Path) {
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    "tinyweb/__init__.py": "def greet(name):\n    return 'hello ' + name + ' from tinyweb'\n",
    "tinyweb-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinyweb\nVersion: 1.0\n",
    "tinyweb-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: virga-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, text in files.items():
        data = text.encode()
        z.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (name, digest, len(data)))
    record.append("tinyweb-1.0.dist-info/RECORD,,")
    z.writestr("tinyweb-1.0.dist-info/RECORD", "\n".join(record) + "\n")
"#;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let ok = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Real OpenFaaS template directories under ./template/ run as they are: `fprocess: python
/// ...` although Debian has only python3, the watchdog settings from the Dockerfile's ENV and
/// ARG lines (template.yml has none), and the template's own dependencies (requirements.txt,
/// package.json at the template's root) installed and importable by its entrypoint. The
/// templates here copy the behaviour of python3-http (flask) and node20 (express), not their
/// files: their dependencies are local packages, so no registry is needed.
#[test]
fn real_template_directories_run_unmodified() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let p = Platform::start_runc(data.path(), &[]);
    let flasky = dir.join("template/flasky");
    write_tree(&flasky, &[
        ("template.yml", "language: flasky\nfprocess: python index.py\n"),
        ("Dockerfile", "FROM ghcr.io/openfaas/of-watchdog:0.10 as watchdog\nFROM python:3.11-alpine as build\nARG UPSTREAM_PORT=5000\nRUN apk add curl\nWORKDIR /home/app/\nCOPY requirements.txt .\nRUN pip install -r requirements.txt\nENV fprocess=\"python index.py\"\nENV cgi_headers=\"true\" mode=\"http\" \\\n    upstream_url=\"http://127.0.0.1:${UPSTREAM_PORT}\"\nCMD [\"fwatchdog\"]\n"),
        ("requirements.txt", "./vendor/tinyweb-1.0-py3-none-any.whl\n"),
        ("index.py", "import os, sys\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\nimport tinyweb\nfrom function import handler\n\nclass H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        body = handler.handle(tinyweb.greet(os.path.basename(sys.executable))).encode()\n        self.send_response(200)\n        self.send_header('Content-Length', str(len(body)))\n        self.end_headers()\n        self.wfile.write(body)\n\nHTTPServer(('0.0.0.0', 5000), H).serve_forever()\n"),
        ("function/__init__.py", ""),
        ("function/requirements.txt", ""),
        ("function/handler.py", "def handle(req):\n    return 'starter: ' + req\n"),
    ]);
    tinyweb_wheel(&flasky.join("vendor/tinyweb-1.0-py3-none-any.whl"));
    write_tree(&dir.join("template/expressy"), &[
        ("template.yml", "language: expressy\nfprocess: node index.js\n"),
        ("Dockerfile", "FROM node:20-alpine as ship\nENV NPM_CONFIG_LOGLEVEL warn\nCOPY package.json ./\nRUN npm i\nENV cgi_headers=\"true\"\nENV fprocess=\"node index.js\"\nENV mode=\"http\"\nENV upstream_url=\"http://127.0.0.1:3000\"\nENV exec_timeout=\"10s\"\nCMD [\"fwatchdog\"]\n"),
        ("package.json", "{\"name\": \"expressy\", \"version\": \"1.0.0\", \"dependencies\": {\"tinyexpress\": \"file:./vendor/tinyexpress\"}}\n"),
        ("vendor/tinyexpress/package.json", "{\"name\": \"tinyexpress\", \"version\": \"1.0.0\", \"main\": \"index.js\"}\n"),
        ("vendor/tinyexpress/index.js", "module.exports = (name) => `hello ${name} from tinyexpress`\n"),
        ("index.js", "const http = require('http')\nconst greet = require('tinyexpress')\nconst handler = require('./function/handler')\nhttp.createServer((req, res) => res.end(handler(greet('node')))).listen(process.env.http_port || 3000)\n"),
        ("function/handler.js", "module.exports = (text) => 'starter: ' + text\n"),
    ]);
    p.cli(dir, &["new", "fl", "--lang", "flasky"]);
    p.cli(dir, &["new", "ex", "--lang", "expressy"]);
    p.cli(dir, &["deploy"]);
    let get = |name: &str| {
        let r = p
            .anon(reqwest::Method::GET, &format!("/function/{name}"))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    assert_eq!(
        get("fl"),
        (200, "starter: hello python from tinyweb".to_string())
    );
    assert_eq!(
        get("ex"),
        (200, "starter: hello node from tinyexpress".to_string())
    );
    let fl = p.get_json("/system/function/fl");
    assert!(
        fl["image"]
            .as_str()
            .unwrap()
            .starts_with("virga.local/fl@sha256:"),
        "{fl}"
    );
}

/// `POST /system/alert` takes AlertManager's webhook as OpenFaaS's gateway does: each firing
/// alert for a function adds `com.openfaas.scale.factor`% of its max replicas (up to max), a
/// resolved one brings it back to min; it needs credentials and names bad input.
#[test]
fn alertmanager_alerts_scale_functions() {
    let data = tempfile::tempdir().unwrap();
    let p = Platform::start(data.path());
    let labels = serde_json::json!({"labels": {
        "com.openfaas.scale.min": "1",
        "com.openfaas.scale.max": "10",
        "com.openfaas.scale.factor": "30"
    }});
    p.deploy_process("busy", "cat", labels);
    let hook = |status: &str| {
        serde_json::json!({
            "receiver": "scale-up", "status": status, "version": "4", "groupKey": "{}:{alertname=\"APIHighInvocationRate\"}",
            "alerts": [{"status": status, "labels": {"alertname": "APIHighInvocationRate", "function_name": "busy.openfaas-fn"}, "annotations": {}}],
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": ""
        })
    };
    let replicas = || {
        p.get_json("/system/function/busy")["replicas"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(replicas(), 1);
    for want in [4, 7, 10, 10] {
        let r = p.send_json(reqwest::Method::POST, "/system/alert", hook("firing"));
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(replicas(), want);
    }
    let r = p.send_json(reqwest::Method::POST, "/system/alert", hook("resolved"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(replicas(), 1);
    let anon = p
        .anon(reqwest::Method::POST, "/system/alert")
        .json(&hook("firing"))
        .send()
        .unwrap();
    assert_eq!(anon.status(), 401);
    let bad = p
        .sys(reqwest::Method::POST, "/system/alert")
        .body("{\"alerts\": 3}")
        .send()
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().unwrap().contains("alerts"));
}
