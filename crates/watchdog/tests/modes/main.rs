//! The watchdog's modes against the real `virga-watchdog` binary (virga-testkit's
//! [`Watchdog`](virga_testkit::watchdog::Watchdog)): HTTP mode with python3 upstreams,
//! serializing (one process per request, buffered), streaming (stdout as produced) and
//! HTTP mode's upgrades (WebSockets, their drain at SIGTERM).

mod http_mode;
mod serializing;
mod streaming;
mod upgrade;
