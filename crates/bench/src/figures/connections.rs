//! Long-lived connections: WebSocket echo round trips (websockets) and gRPC unary calls over
//! HTTP/2 (grpc) through the gateway, each against the same calls made directly on a
//! standalone watchdog in the same run.

mod grpc;
mod websockets;

use anyhow::Result;

use crate::report::Section;

use super::Ctx;

/// Name for `--only`.
pub const NAME: &str = "connections";

/// Section heading.
pub const TITLE: &str = "Long-lived connections: WebSockets and gRPC";

/// What the figures mean.
pub const ABOUT: &str = "\
A WebSocket echo server is an http-mode function (one instance: `com.openfaas.scale.max: \
1`), reached through the gateway (`ws://…/function/NAME`: the gateway hands the client's \
socket to the instance's watchdog, which splices it with the server's) and, as the baseline, \
directly on a standalone `virga-watchdog` in front of the same server. Each socket sends a 5-byte text message and \
waits for its echo, over and over. *Messages/s*: round trips completed per second on 32 \
sockets at once; *p50 and p99 round trip*: one socket, one message at a time. The *Python* \
rows run an echo server on the `websockets` package (PyPI; `scripts/setup --bench` installs \
it), what a user deploys: there the gateway must keep ≥ 0.8× of the throughput and add \
≤ 100 µs at p50. The *fast echo* rows repeat this in front of `virga-bench ws-echo` \
(tungstenite, a thread per socket), so the echo costs next to nothing and the difference is \
the platform's own (the handshake aside, nothing: after the hand-off the frames take the \
baseline's path); only the added p50 has a target there. The client is tungstenite, a \
thread per socket, in the benchmark's process.\n\n\
gRPC unary calls (a 10-byte message, echoed, `grpc-status: 0` checked in every answer's \
trailers) over HTTP/2 with prior knowledge (h2c), made by virga-bench's own client (hyper; \
2 connections with 16 calls in flight on each for throughput, one call at a time for \
latency). The function is a trivially fast h2c gRPC server (`virga-bench grpc-upstream`) \
behind the watchdog in http mode, one instance; the baseline is the same upstream behind a \
standalone `virga-watchdog`, called directly in the same run. The ratio of throughputs is \
what a gRPC function keeps of its capacity behind the gateway's extra HTTP/2 hop.";

/// Measures every figure of the group (the gRPC ones also when the WebSocket ones failed).
pub fn run(ctx: &Ctx, s: &mut Section) -> Result<()> {
    let ws = websockets::run(ctx, s);
    grpc::run(ctx, s)?;
    ws
}
