//! Long-lived connections end to end against the real `virga up`, over real HTTP: HTTP/2,
//! gRPC and TLS at the gateway (grpc).

mod grpc;
