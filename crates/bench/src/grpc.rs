//! gRPC for the `connections` figures: a trivially fast h2c gRPC server (`virga-bench
//! grpc-upstream`, on the port of `upstream_url` like any http-mode upstream) that answers
//! every unary call with its own request message and `grpc-status: 0`, and a load generator
//! that makes unary calls over HTTP/2 with prior knowledge (hyper's client: C connections, S
//! calls in flight on each), checking every answer's trailers.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE, TE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::runner::Stats;

/// The request message of every call: gRPC's 5-byte frame head (uncompressed, length 5),
/// then `hello`.
const MESSAGE: &[u8] = b"\0\0\0\0\x05hello";

/// Serves the echo until killed.
pub fn serve_upstream() -> Result<()> {
    let port = crate::fast_upstream::upstream_port()?;
    let rt = tokio::runtime::Runtime::new().context("start the runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("listen on 127.0.0.1:{port}"))?;
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            tokio::spawn(async move {
                let service = hyper::service::service_fn(echo);
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn echo(
    req: Request<Incoming>,
) -> Result<Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>, Infallible> {
    let message = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let body = Full::new(message)
        .map_err(|never| match never {})
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(resp)
}

/// The shape of one load run.
#[derive(Debug, Clone)]
pub struct Load {
    /// HTTP/2 connections.
    pub connections: usize,
    /// Calls in flight on each.
    pub streams: usize,
    /// How long to keep calling.
    pub duration: Duration,
}

/// `hN×S` for labels.
pub fn shape(load: &Load) -> String {
    format!(
        "{} connection(s) × {} calls in flight",
        load.connections, load.streams
    )
}

/// Unary calls to `url` (`http://HOST:PORT/PATH`) for `load.duration`; their rate and
/// latencies. Fails if any call fails or answers a status other than 0.
pub fn run(url: &str, load: &Load) -> Result<Stats> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the load runtime")?;
    rt.block_on(drive(url, load))
}

/// One call to `url`, retried until it succeeds or `limit` passes.
pub fn wait_ok(url: &str, limit: Duration) -> Result<()> {
    let load = Load {
        connections: 1,
        streams: 1,
        duration: Duration::ZERO,
    };
    let deadline = Instant::now() + limit;
    loop {
        match run(url, &load) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("no gRPC answer from {url}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

async fn drive(url: &str, load: &Load) -> Result<Stats> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let addr = uri
        .authority()
        .context("URL without host:port")?
        .to_string();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let until = started + load.duration;
    let mut tasks = Vec::new();
    for _ in 0..load.connections {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        tcp.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .context("HTTP/2 handshake")?;
        tokio::spawn(conn);
        for _ in 0..load.streams {
            let (mut sender, uri, samples) = (sender.clone(), uri.clone(), samples.clone());
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let t = Instant::now();
                    call(&mut sender, &uri).await?;
                    mine.push(t.elapsed().as_secs_f64() * 1e6);
                    if Instant::now() >= until {
                        break;
                    }
                }
                samples
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .extend(mine);
                Ok::<_, anyhow::Error>(())
            }));
        }
    }
    for t in tasks {
        t.await.context("load task")??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut samples =
        std::mem::take(&mut *samples.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let mut stats = Stats::from_samples(&mut samples).context("no call made")?;
    stats.rps = stats.count as f64 / elapsed;
    Ok(stats)
}

/// One unary call; an error unless it ends with `grpc-status: 0`.
async fn call(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    uri: &hyper::Uri,
) -> Result<()> {
    let req = Request::post(uri.clone())
        .header(CONTENT_TYPE, "application/grpc")
        .header(TE, "trailers")
        .body(Full::new(Bytes::from_static(MESSAGE)))?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    let (status, head) = (resp.status(), resp.headers().clone());
    let body = resp.into_body().collect().await?;
    // In the trailers, or in the head of a Trailers-Only answer (an error).
    let end = body.trailers().unwrap_or(&head).clone();
    let field = |name: &str| {
        end.get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    if field("grpc-status").as_deref() != Some("0") || body.to_bytes() != MESSAGE {
        bail!(
            "call to {uri}: HTTP {status}, grpc-status {:?}, grpc-message {:?}",
            field("grpc-status"),
            field("grpc-message")
        );
    }
    Ok(())
}
