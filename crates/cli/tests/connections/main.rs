//! Long-lived connections end to end against the real `virga up`, over real HTTP:
//! streamed answers and server-sent events, streamed request bodies, calls that outlive the
//! gateway's timeouts, async calls that outlive the queue's redelivery window, and the calls
//! in progress (long_calls); HTTP/2, gRPC and TLS at the gateway (grpc); WebSockets and other
//! HTTP/1.1 upgrades, their limits and their drain (websockets).

mod grpc;
mod long_calls;
mod websockets;
