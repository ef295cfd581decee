//! The one test harness of Virga's end-to-end tests (`crates/cli/tests`,
//! `crates/watchdog/tests`, `crates/gateway/tests`): the real `virga up` ([`Platform`]), the
//! real `virga-watchdog` ([`watchdog::Watchdog`]), the CLI, bundles, a headless browser
//! ([`browser::Browser`]), real message brokers ([`brokers`]), and [`WatchdogProvider`], a provider running real watchdogs for
//! testing the gateway alone. Tests may `unwrap`: a failure is a failed test.

mod bins;
pub mod boto3;
pub mod brokers;
pub mod browser;
pub mod bundle;
pub mod certs;
mod host;
mod platform;
mod provider;
pub mod registry;
pub mod watchdog;

pub use bins::{bin, lambda_fixture_bin, virga_bin, watchdog_bin};
pub use host::{sandbox_leftovers, script};
pub use platform::{cli, Answer, Platform, PASSWORD};
pub use provider::WatchdogProvider;

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
