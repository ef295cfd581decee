//! Watchdog configuration read from the same environment variables as the
//! OpenFaaS classic watchdog and of-watchdog, plus Go-style duration parsing.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

use hyper::Uri;

/// Default for `read_timeout`, `write_timeout` and `exec_timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default port, as in OpenFaaS.
const DEFAULT_PORT: u16 = 8080;
/// Default for `drain_grace`.
const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(30);
/// Go's `bufio.MaxScanTokenSize`, the of-watchdog default line buffer.
const DEFAULT_LOG_BUFFER_SIZE: usize = 64 * 1024;

/// Every environment variable the watchdog reads: its settings, fixed when it starts.
pub const ENV_KEYS: [&str; 18] = [
    "fprocess",
    "function_process",
    "mode",
    "upstream_url",
    "exec_timeout",
    "read_timeout",
    "write_timeout",
    "healthcheck_interval",
    "max_inflight",
    "port",
    "log_buffer_size",
    "bind_address",
    "content_type",
    "prefix_logs",
    "suppress_lock",
    "cgi_headers",
    "drain_grace",
    "handoff_socket",
];

/// An invalid or missing configuration value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is absent or empty.
    #[error("environment variable `{0}` is required")]
    Missing(&'static str),
    /// A variable is present but cannot be parsed.
    #[error("invalid value {value:?} for `{name}`: {reason}")]
    Invalid {
        /// Variable name.
        name: &'static str,
        /// Raw value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// How requests are handed to the function process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One long-running process; requests are reverse-proxied to `upstream_url`.
    Http,
    /// One process per request; stdin/stdout are streamed.
    Streaming,
    /// One process per request; whole body in, whole stdout out (classic watchdog).
    Serializing,
    /// One long-running AWS Lambda runtime fed events through the Lambda Runtime API.
    Lambda,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "http" => Ok(Mode::Http),
            "streaming" => Ok(Mode::Streaming),
            "serializing" => Ok(Mode::Serializing),
            "lambda" => Ok(Mode::Lambda),
            other => Err(format!(
                "unsupported mode {other:?} (expected http, streaming, serializing or lambda)"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Http => "http",
            Mode::Streaming => "streaming",
            Mode::Serializing => "serializing",
            Mode::Lambda => "lambda",
        })
    }
}

/// Complete watchdog configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Function command line, already split on whitespace (never empty).
    pub fprocess: Vec<String>,
    /// Request handling mode.
    pub mode: Mode,
    /// Upstream base URL (http mode only).
    pub upstream_url: Option<Uri>,
    /// Per-request execution limit; `None` means unlimited.
    pub exec_timeout: Option<Duration>,
    /// Limit for reading a request; `None` means unlimited.
    pub read_timeout: Option<Duration>,
    /// Limit for writing a response, also the shutdown grace; `None` means unlimited.
    pub write_timeout: Option<Duration>,
    /// Maximum concurrent function requests; 0 means unlimited.
    pub max_inflight: usize,
    /// TCP port; 0 binds an ephemeral port.
    pub port: u16,
    /// Listen address (`bind_address`, default 127.0.0.1).
    pub bind_address: IpAddr,
    /// Response Content-Type override for serializing/streaming modes.
    pub content_type: Option<String>,
    /// Prefix function log lines with a timestamp and stream name.
    pub prefix_logs: bool,
    /// Interval of the periodic upstream health check (http mode).
    pub healthcheck_interval: Duration,
    /// Accepted for compatibility; no lock file is written.
    pub suppress_lock: bool,
    /// Maximum length of one function log line before it is split.
    pub log_buffer_size: usize,
    /// Set `Http_*` CGI variables for per-request processes (`cgi_headers`).
    pub cgi_headers: bool,
    /// How long open upgraded connections (WebSockets) may go on after SIGTERM before they
    /// are closed (`drain_grace`, http mode).
    pub drain_grace: Duration,
    /// Where an http-mode watchdog takes upgraded client connections handed over by the
    /// gateway (`handoff_socket`, set by the platform; see `virga_http::handoff`).
    pub handoff_socket: Option<std::path::PathBuf>,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let vars: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self::from_map(&vars)
    }

    /// Builds a configuration from an explicit variable map (used by tests).
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());

        let fprocess_raw = get("fprocess")
            .or_else(|| get("function_process"))
            .ok_or(ConfigError::Missing("fprocess"))?;
        let fprocess = split_command(fprocess_raw)
            .map_err(|reason| invalid("fprocess", fprocess_raw, reason))?;

        let mode = match get("mode") {
            Some(v) => v.parse().map_err(|reason| invalid("mode", v, reason))?,
            None => Mode::Streaming,
        };
        let upstream_url = get("upstream_url").map(parse_upstream).transpose()?;
        if mode == Mode::Http && upstream_url.is_none() {
            return Err(ConfigError::Missing("upstream_url"));
        }

        let timeouts = Timeouts::from_vars(&get)?;
        let max_inflight = parse_num("max_inflight", get("max_inflight"), 0usize)?;
        let port = parse_num("port", get("port"), DEFAULT_PORT)?;
        let log_buffer_size = parse_num(
            "log_buffer_size",
            get("log_buffer_size"),
            DEFAULT_LOG_BUFFER_SIZE,
        )?
        .max(1);
        let bind_address = match get("bind_address") {
            Some(v) => v
                .parse()
                .map_err(|e: std::net::AddrParseError| invalid("bind_address", v, e.to_string()))?,
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };

        Ok(Config {
            fprocess,
            mode,
            upstream_url,
            exec_timeout: timeouts.exec,
            read_timeout: timeouts.read,
            write_timeout: timeouts.write,
            max_inflight,
            port,
            bind_address,
            content_type: get("content_type").map(str::to_owned),
            prefix_logs: parse_bool("prefix_logs", get("prefix_logs"), true)?,
            healthcheck_interval: timeouts.healthcheck,
            suppress_lock: parse_bool("suppress_lock", get("suppress_lock"), false)?,
            log_buffer_size,
            cgi_headers: parse_bool("cgi_headers", get("cgi_headers"), true)?,
            drain_grace: timeouts.drain,
            handoff_socket: get("handoff_socket").map(std::path::PathBuf::from),
        })
    }
}

/// The durations of a configuration.
struct Timeouts {
    exec: Option<Duration>,
    read: Option<Duration>,
    write: Option<Duration>,
    healthcheck: Duration,
    drain: Duration,
}

impl Timeouts {
    /// `exec_timeout`, `read_timeout`, `write_timeout` (10 s unless set; 0 is unlimited),
    /// `healthcheck_interval` (`write_timeout` unless set) and `drain_grace` (30 s unless
    /// set), through `get`.
    fn from_vars<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<Timeouts, ConfigError> {
        let duration = |name: &'static str| -> Result<Option<Duration>, ConfigError> {
            match get(name) {
                Some(v) => {
                    let d = virga_types::duration::parse(v)
                        .map_err(|reason| invalid(name, v, reason))?;
                    Ok((!d.is_zero()).then_some(d))
                }
                None => Ok(Some(DEFAULT_TIMEOUT)),
            }
        };
        let exec = duration("exec_timeout")?;
        let read = duration("read_timeout")?;
        let write = duration("write_timeout")?;

        let healthcheck = match get("healthcheck_interval") {
            Some(v) => virga_types::duration::parse(v)
                .map_err(|reason| invalid("healthcheck_interval", v, reason))?,
            None => Duration::ZERO,
        };
        // of-watchdog defaults the interval to write_timeout.
        let healthcheck = if healthcheck.is_zero() {
            write.unwrap_or(DEFAULT_TIMEOUT)
        } else {
            healthcheck
        };
        let drain = match get("drain_grace") {
            Some(v) => virga_types::duration::parse(v)
                .map_err(|reason| invalid("drain_grace", v, reason))?,
            None => DEFAULT_DRAIN_GRACE,
        };
        Ok(Timeouts {
            exec,
            read,
            write,
            healthcheck,
            drain,
        })
    }
}

fn invalid(name: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn parse_num<T: FromStr>(name: &'static str, v: Option<&str>, default: T) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    match v {
        Some(v) => v
            .parse()
            .map_err(|e: T::Err| invalid(name, v, e.to_string())),
        None => Ok(default),
    }
}

fn parse_bool(name: &'static str, v: Option<&str>, default: bool) -> Result<bool, ConfigError> {
    match v.map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(_) => Err(invalid(
            name,
            v.unwrap_or_default(),
            "expected true or false",
        )),
    }
}

/// Splits a command line into words with the shell's quoting rules (single and double
/// quotes, backslashes), but no expansion: `sh -c 'a; b'` is three words. A value without
/// quotes or backslashes splits on whitespace, as OpenFaaS splits `fprocess`.
pub fn split_command(s: &str) -> Result<Vec<String>, String> {
    shlex::split(s).ok_or_else(|| "unbalanced quotes or a trailing backslash".to_string())
}

fn parse_upstream(v: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = v
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| invalid("upstream_url", v, e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(invalid(
            "upstream_url",
            v,
            "only http:// upstreams are supported",
        ));
    }
    if uri.authority().is_none() {
        return Err(invalid("upstream_url", v, "missing host"));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fprocess_splits_with_shell_quoting() {
        let words = |s: &str| split_command(s).unwrap();
        assert_eq!(words("wc -l"), ["wc", "-l"]);
        assert_eq!(words("  cat   -A  "), ["cat", "-A"]);
        assert_eq!(
            words("sh -c 'echo a; echo b'"),
            ["sh", "-c", "echo a; echo b"]
        );
        assert_eq!(words(r#"printf "%s\n" x"#), ["printf", "%s\\n", "x"]);
        assert_eq!(words(r"echo a\ b"), ["echo", "a b"]);
        assert!(split_command("sh -c 'unbalanced").is_err());
        let cfg = Config::from_map(&map(&[("fprocess", "sh -c 'echo \"a b\"'")])).unwrap();
        assert_eq!(cfg.fprocess, ["sh", "-c", "echo \"a b\""]);
        assert!(Config::from_map(&map(&[("fprocess", "sh -c 'x")])).is_err());
    }

    #[test]
    fn defaults() {
        let c = Config::from_map(&map(&[("fprocess", "  cat  -n ")])).unwrap();
        assert_eq!(c.fprocess, vec!["cat", "-n"]);
        assert_eq!(c.mode, Mode::Streaming);
        assert_eq!(c.port, 8080);
        assert_eq!(c.exec_timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.read_timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.write_timeout, Some(Duration::from_secs(10)));
        assert_eq!(c.healthcheck_interval, Duration::from_secs(10));
        assert_eq!(c.bind_address, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(c.max_inflight, 0);
        assert_eq!(c.drain_grace, Duration::from_secs(30));
        assert!(c.prefix_logs);
        assert!(c.cgi_headers);
        assert!(c.content_type.is_none());
    }

    #[test]
    fn explicit_values() {
        let c = Config::from_map(&map(&[
            ("fprocess", "python3 server.py"),
            ("mode", "http"),
            ("upstream_url", "http://127.0.0.1:5000"),
            ("exec_timeout", "0"),
            ("write_timeout", "2s"),
            ("read_timeout", "3"),
            ("max_inflight", "4"),
            ("port", "0"),
            ("bind_address", "0.0.0.0"),
            ("prefix_logs", "false"),
            ("content_type", "text/plain"),
            ("drain_grace", "0"),
        ]))
        .unwrap();
        assert_eq!(c.drain_grace, Duration::ZERO);
        assert_eq!(c.mode, Mode::Http);
        assert_eq!(c.exec_timeout, None);
        assert_eq!(c.write_timeout, Some(Duration::from_secs(2)));
        assert_eq!(c.read_timeout, Some(Duration::from_secs(3)));
        assert_eq!(c.healthcheck_interval, Duration::from_secs(2));
        assert_eq!(c.max_inflight, 4);
        assert_eq!(c.port, 0);
        assert_eq!(c.bind_address.to_string(), "0.0.0.0");
        assert!(!c.prefix_logs);
        assert_eq!(c.content_type.as_deref(), Some("text/plain"));
    }

    #[test]
    fn lambda_mode_needs_no_upstream() {
        let c = Config::from_map(&map(&[("fprocess", "bootstrap"), ("mode", "Lambda")])).unwrap();
        assert_eq!(c.mode, Mode::Lambda);
        assert_eq!(c.mode.to_string(), "lambda");
        assert!(c.upstream_url.is_none());
    }

    #[test]
    fn errors() {
        assert!(matches!(
            Config::from_map(&map(&[])),
            Err(ConfigError::Missing("fprocess"))
        ));
        assert!(matches!(
            Config::from_map(&map(&[("fprocess", "x"), ("mode", "http")])),
            Err(ConfigError::Missing("upstream_url"))
        ));
        assert!(Config::from_map(&map(&[("fprocess", "x"), ("mode", "static")])).is_err());
        assert!(Config::from_map(&map(&[("fprocess", "x"), ("port", "99999")])).is_err());
        assert!(Config::from_map(&map(&[("fprocess", "x"), ("exec_timeout", "ten")])).is_err());
        assert!(Config::from_map(&map(&[
            ("fprocess", "x"),
            ("mode", "http"),
            ("upstream_url", "https://x")
        ]))
        .is_err());
    }
}
