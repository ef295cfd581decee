//! Binding a pooled runtime to a function: its isolation attaches the function's code and
//! secrets (in a sandbox: read-only mounts, and its limits written); then one
//! `POST /_/virga/bind` (the code's directory and environment) makes the runtime load the code.
//!
//! The call is authenticated both ways. It carries the runtime's bind token, a secret only the
//! platform and that runtime hold (the runtime refuses a bind without it, so no function can
//! bind another's pooled runtime), and the answer must carry proof the runtime knew the token,
//! `X-Virga-Bound: hex(sha256("virga-bound:" + token))`: a `200` from anything else (say, a
//! function that had taken over the runtime) is not a bind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpStream;

use crate::boot::Booted;
use crate::isolation::Handle;
use crate::spec::InstanceSpec;

/// The request header carrying the bind token.
const TOKEN_HEADER: &str = "x-virga-bind-token";
/// The answer header carrying the proof.
const PROOF_HEADER: &str = "x-virga-bound";
/// How long a runtime may take to load a function's code.
const BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// Give the pooled instance `booted` the function's code and secrets, then have its runtime
/// load them with `env`, as the function's instance `id`.
pub(super) async fn bind(
    booted: &Pooled<'_>,
    spec: &InstanceSpec,
    env: &BTreeMap<String, String>,
    id: &str,
) -> Result<(), String> {
    let token = booted.token.ok_or("not a pooled runtime")?;
    let mut env = env.clone();
    env.insert("HOSTNAME".into(), id.into());
    let dir = booted.handle.attach(spec, &mut env)?;
    let body = serde_json::json!({"dir": dir, "env": env}).to_string();
    tokio::time::timeout(BIND_TIMEOUT, call(booted.addr, token, body))
        .await
        .map_err(|_| format!("no answer to the bind within {BIND_TIMEOUT:?}"))?
}

/// What a bind needs of a pooled instance (not its life, which stays with its owner).
pub(super) struct Pooled<'a> {
    pub(super) handle: &'a dyn Handle,
    pub(super) addr: SocketAddr,
    pub(super) token: Option<&'a str>,
}

impl<'a> Pooled<'a> {
    /// The bind-relevant parts of `b`.
    pub(super) fn of(b: &'a Booted) -> Pooled<'a> {
        Pooled {
            handle: b.handle.as_ref(),
            addr: b.addr,
            token: b.bind_token.as_deref(),
        }
    }
}

/// `POST /_/virga/bind` to `addr` with `token`; Ok when the answer is a 200 with the proof.
async fn call(addr: SocketAddr, token: &str, body: String) -> Result<(), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::post("/_/virga/bind")
        .header(hyper::header::HOST, "localhost")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(TOKEN_HEADER, token)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let proof = resp
        .headers()
        .get(PROOF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
        .unwrap_or_default();
    if !status.is_success() {
        return Err(format!("bind answered {status}: {text}"));
    }
    let want = hex::encode(Sha256::digest(format!("virga-bound:{token}")));
    match proof {
        Some(p) if bool::from(p.as_bytes().ct_eq(want.as_bytes())) => Ok(()),
        _ => Err("the bind's answer does not prove it came from the pooled runtime".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server answering every connection with `answer`; returns its address.
    async fn answering(answer: &'static str) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_200_without_the_proof_is_not_a_bind() {
        let token = "ab".repeat(32);
        let plain = answering("HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nbound\n").await;
        let err = call(plain, &token, "{}".into()).await.unwrap_err();
        assert!(err.contains("does not prove"), "{err}");
        let wrong =
            answering("HTTP/1.1 200 OK\r\nx-virga-bound: 00\r\ncontent-length: 0\r\n\r\n").await;
        assert!(call(wrong, &token, "{}".into()).await.is_err());
        let proof = hex::encode(Sha256::digest(format!("virga-bound:{token}")));
        let good: &'static str = Box::leak(
            format!("HTTP/1.1 200 OK\r\nx-virga-bound: {proof}\r\ncontent-length: 0\r\n\r\n")
                .into_boxed_str(),
        );
        call(answering(good).await, &token, "{}".into())
            .await
            .unwrap();
    }
}
