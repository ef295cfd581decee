//! A Lambda function built on the Rust `lambda_runtime` crate, for the watchdog's `mode=lambda`
//! tests: the JSON event's `op` says what it does (`echo`, `error`, `sleep`, `crash`, `big`,
//! `env`, `print`, `stream`); a function-URL event's path says it (see `url`).

use std::time::Duration;

use base64::Engine;

use lambda_runtime::streaming::{channel, Body};
use lambda_runtime::{service_fn, Diagnostic, FunctionResponse, LambdaEvent, StreamResponse};
use serde_json::{json, Value};

/// The Lambda variables the `env` op reports.
const ENV_NAMES: &[&str] = &[
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_TIMEOUT",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_EXECUTION_ENV",
    "_HANDLER",
    "LAMBDA_TASK_ROOT",
    "LAMBDA_RUNTIME_DIR",
    "TZ",
    "VIRGA_BIND_TOKEN",
    "VIRGA_POOL",
    "GREETING",
];

type Answer = FunctionResponse<Value, Body>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    // Each start is counted, so tests can see that init ran again after a restart.
    println!("fixture init pid={}", std::process::id());
    lambda_runtime::run(service_fn(handle)).await
}

async fn handle(event: LambdaEvent<Value>) -> Result<Answer, Diagnostic> {
    let (payload, ctx) = event.into_parts();
    // A function-URL event names its op by its path (`/echo` is `url`, see [`url`]).
    let op = match payload["rawPath"].as_str() {
        Some("/stream") => "stream".to_owned(),
        Some("/error") => "error".to_owned(),
        Some("/env") => "env".to_owned(),
        Some(_) => "url".to_owned(),
        None => payload["op"].as_str().unwrap_or("echo").to_owned(),
    };
    let buffered = |v: Value| Ok(FunctionResponse::BufferedResponse(v));
    match op.as_str() {
        "echo" => buffered(json!({
            "event": payload,
            "pid": std::process::id(),
            "requestId": ctx.request_id,
            "deadline": ctx.deadline,
            "invokedFunctionArn": ctx.invoked_function_arn,
            "traceId": ctx.xray_trace_id,
            "clientContext": ctx.client_context.map(|c| json!({"custom": c.custom})),
        })),
        "error" => Err(Diagnostic {
            error_type: payload["type"]
                .as_str()
                .unwrap_or("FixtureError")
                .to_owned(),
            error_message: payload["message"].as_str().unwrap_or("failed").to_owned(),
        }),
        "sleep" => {
            let ms = payload["ms"].as_u64().unwrap_or(0);
            let start = epoch_ms();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            buffered(
                json!({"slept": ms, "pid": std::process::id(), "start": start, "end": epoch_ms()}),
            )
        }
        "crash" => std::process::exit(3),
        "big" => {
            let n = payload["bytes"].as_u64().unwrap_or(7 << 20) as usize;
            buffered(Value::String("x".repeat(n)))
        }
        "env" => buffered(
            ENV_NAMES
                .iter()
                .map(|n| (n.to_string(), std::env::var(n).ok().into()))
                .chain([(
                    "cwd".to_string(),
                    std::env::current_dir()
                        .map(|d| d.display().to_string())
                        .ok()
                        .into(),
                )])
                .collect::<serde_json::Map<String, Value>>()
                .into(),
        ),
        "print" => {
            for line in payload["lines"].as_array().into_iter().flatten() {
                println!("{}", line.as_str().unwrap_or_default());
            }
            buffered(json!("printed"))
        }
        "url" => url(payload),
        "stream" => Ok(stream(&payload)),
        other => Err(Diagnostic {
            error_type: "UnknownOp".into(),
            error_message: format!("unknown op {other:?}"),
        }),
    }
}

/// Milliseconds since the epoch.
fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The answer to a function-URL event, by its path: the event itself (`/echo`, a bare JSON
/// result), a status with headers and cookies (`/status`), a base64 body (`/binary`), a bare
/// string (`/string`).
fn url(event: Value) -> Result<Answer, Diagnostic> {
    let answer = match event["rawPath"].as_str().unwrap_or_default() {
        "/status" => json!({
            "statusCode": 418,
            "headers": {"x-fixture": "teapot", "content-type": "text/plain", "content-length": "3"},
            "cookies": ["a=1; Path=/", "b=2"],
            "body": "short and stout",
        }),
        "/binary" => json!({
            "statusCode": 200,
            "headers": {"content-type": "application/octet-stream"},
            "body": base64::engine::general_purpose::STANDARD.encode((0..=255u8).collect::<Vec<u8>>()),
            "isBase64Encoded": true,
        }),
        "/string" => json!("just a string"),
        _ => event,
    };
    Ok(FunctionResponse::BufferedResponse(answer))
}

/// `parts` chunks, `gap_ms` apart.
fn stream(payload: &Value) -> Answer {
    let parts = payload["parts"].as_u64().unwrap_or(3);
    let gap = Duration::from_millis(payload["gap_ms"].as_u64().unwrap_or(300));
    let (mut tx, rx) = channel();
    tokio::spawn(async move {
        for i in 0..parts {
            if tx.send_data(format!("part {i}\n").into()).await.is_err() {
                return;
            }
            tokio::time::sleep(gap).await;
        }
    });
    let mut resp = StreamResponse::from(rx);
    resp.metadata_prelude.status_code = hyper::StatusCode::CREATED;
    resp.metadata_prelude.cookies = vec!["s=1".into()];
    FunctionResponse::StreamingResponse(resp)
}
