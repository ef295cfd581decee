//! The floor of any gateway (`virga-bench bare-proxy TARGET`): an HTTP/1.1 reverse proxy with
//! nothing but the hop itself (hyper server, pooled hyper client, tokio's default runtime; no
//! routing, auth, metrics or headers of its own). Classic figures put it where the gateway
//! sits, so the gateway's share of a request splits into the hop every design pays and the
//! gateway's own work. Prints `listening on ADDR` once bound to a free loopback port.

use std::convert::Infallible;

use anyhow::{Context, Result};
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = BoxBody<Bytes, hyper::Error>;

/// Proxies every request to `target` (`http://HOST:PORT`) until killed.
pub fn serve(target: &str) -> Result<()> {
    let target: Uri = target.parse().context("target must be http://HOST:PORT")?;
    let authority = target
        .authority()
        .context("target has no host:port")?
        .clone();
    let rt = tokio::runtime::Runtime::new().context("start the runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening on {}", listener.local_addr()?);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build(connector);
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let (client, authority) = (client.clone(), authority.clone());
            tokio::spawn(async move {
                let service = service_fn(move |mut req: Request<Incoming>| {
                    let (client, authority) = (client.clone(), authority.clone());
                    async move {
                        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                        let uri = Uri::builder()
                            .scheme("http")
                            .authority(authority)
                            .path_and_query(path)
                            .build();
                        let answer: Response<Body> = match uri {
                            Ok(uri) => {
                                *req.uri_mut() = uri;
                                match client.request(req).await {
                                    Ok(resp) => resp.map(BodyExt::boxed),
                                    Err(e) => bad_gateway(&e.to_string()),
                                }
                            }
                            Err(e) => bad_gateway(&e.to_string()),
                        };
                        Ok::<_, Infallible>(answer)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn bad_gateway(msg: &str) -> Response<Body> {
    let body = http_body_util::Full::new(Bytes::from(msg.to_string()))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}
