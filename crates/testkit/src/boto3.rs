//! The real AWS SDK for Python (boto3, from PyPI; `scripts/setup --test` installs it) against
//! a gateway: a test writes the body of a Python script that fills the dict `out`, and gets
//! `out` back as JSON. The script has a Lambda client `c` (endpoint the gateway, region
//! us-east-1, access key `admin`, the given secret, no SDK retries) and `err(f)`, which calls
//! `f` and returns the `ClientError` botocore raised as `{code, message, status, class}` (or
//! `None`).

use std::path::Path;
use std::process::Command;

const PRELUDE: &str = r#"
import base64, json, os, sys
import boto3, botocore
from botocore.config import Config

c = boto3.client(
    "lambda",
    endpoint_url=os.environ["VIRGA_ENDPOINT"],
    region_name="us-east-1",
    aws_access_key_id=os.environ["VIRGA_KEY_ID"],
    aws_secret_access_key=os.environ["VIRGA_SECRET"],
    config=Config(retries={"total_max_attempts": 1}, read_timeout=120, connect_timeout=10),
)

def err(f):
    try:
        f()
    except botocore.exceptions.ClientError as e:
        return {
            "code": e.response["Error"]["Code"],
            "message": e.response["Error"]["Message"],
            "status": e.response["ResponseMetadata"]["HTTPStatusCode"],
            "class": type(e).__name__,
        }
    return None

def payload(r):
    return r["Payload"].read().decode()

out = {}
"#;

/// Run `body` (Python, after the prelude) in `dir` with key id `key_id` and `secret` against
/// the gateway at `url`; its `out` as JSON. Panics with the script's stderr if it fails.
pub fn run(dir: &Path, url: &str, key_id: &str, secret: &str, body: &str) -> serde_json::Value {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let script = dir.join(format!("boto3-{}-{n}.py", std::process::id()));
    let text = format!("{PRELUDE}\n{body}\nprint(json.dumps(out))\n");
    std::fs::write(&script, text).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("VIRGA_ENDPOINT", url)
        .env("VIRGA_KEY_ID", key_id)
        .env("VIRGA_SECRET", secret)
        .output()
        .expect("run python3 (scripts/setup --test installs boto3)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "boto3 script failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}
