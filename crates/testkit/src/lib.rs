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

/// A loopback TCP port free right now, for a server the test starts itself. Ports come
/// from 20000-32767, below the kernel's ephemeral range (32768-60999), so no `bind(0)` of
/// another test or test suite can take one between this call and the server's bind; each
/// process walks the range from its own pid-derived offset, so two suites running at once
/// do not pick the same ports either.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_768;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
        assert!(
            n < 4 * SPAN,
            "no free loopback port in {LOW}-{}",
            LOW + SPAN
        );
    }
}

/// Run `cmd` to its end; its stdout, after asserting it succeeded (its stderr otherwise).
pub fn stdout_of(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
