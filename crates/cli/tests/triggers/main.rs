//! Event triggers end to end: the real `virga up` with its cron, NATS and MQTT connectors
//! against a real `nats-server` and `mosquitto` on free loopback ports, publishing with real
//! clients, counting invocations exactly.

mod cron;
mod mqtt;
mod nats;
mod support;
mod tls;
