//! Checks of the watchdog variables a function sets (the OpenFaaS watchdog keys that
//! `virga-watchdog` reads), so a bad value is a 400 at deploy instead of every instance
//! failing to start. Syntax follows the watchdog: values are trimmed, an empty value counts
//! as unset, durations are [`crate::duration::parse`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::{duration, Invalid};

/// Longest `KEY=VALUE` the kernel passes to a new process (MAX_ARG_STRLEN, with its NUL).
const MAX_VAR_BYTES: usize = 128 * 1024;
/// Most bytes of variables a function may set: exec's whole budget for arguments and
/// environment is 2 MiB with the usual 8 MiB stack, and the platform adds its own.
const MAX_ENV_BYTES: usize = 1 << 20;

/// Modes the watchdog runs functions in.
pub const WATCHDOG_MODES: [&str; 4] = ["http", "streaming", "serializing", "lambda"];

/// What one watchdog variable must look like.
enum Kind {
    Duration,
    Count,
    Port,
    Bool,
    Mode,
    Url,
    Ip,
}

/// The watchdog's variables and their syntax (crates/watchdog/src/config.rs).
const KEYS: [(&str, Kind); 14] = [
    ("exec_timeout", Kind::Duration),
    ("read_timeout", Kind::Duration),
    ("write_timeout", Kind::Duration),
    ("healthcheck_interval", Kind::Duration),
    ("drain_grace", Kind::Duration),
    ("max_inflight", Kind::Count),
    ("log_buffer_size", Kind::Count),
    ("port", Kind::Port),
    ("prefix_logs", Kind::Bool),
    ("suppress_lock", Kind::Bool),
    ("cgi_headers", Kind::Bool),
    ("mode", Kind::Mode),
    ("upstream_url", Kind::Url),
    ("bind_address", Kind::Ip),
];

/// The `max_inflight` a watchdog with `env` enforces per instance: `None` when unset, empty,
/// 0 (unlimited) or not a number (refused at deploy by [`check_watchdog_env`]).
pub fn max_inflight(env: &BTreeMap<String, String>) -> Option<usize> {
    env.get("max_inflight")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
}

/// Check `env` (a function's envVars or a bundle's manifest env, reported under `field`):
/// every variable fits in a process's environment (no NUL, not too long), and every watchdog
/// variable it sets is valid.
pub fn check_watchdog_env(field: &str, env: &BTreeMap<String, String>) -> Result<(), Invalid> {
    let mut total = 0;
    for (k, v) in env {
        let name = format!("{field}.{k}");
        let too = |reason: &str| Invalid {
            field: name.clone(),
            reason: reason.into(),
        };
        if v.contains('\0') {
            return Err(too(
                "contains a NUL byte, which no environment variable can hold",
            ));
        }
        let bytes = k.len() + v.len() + 2;
        if bytes > MAX_VAR_BYTES {
            return Err(too(
                "is longer than the 128 KiB one environment variable may hold",
            ));
        }
        total += bytes;
        if total > MAX_ENV_BYTES {
            return Err(too(
                "brings the variables past 1 MiB, more than a process's environment should hold",
            ));
        }
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        if let Some((_, kind)) = KEYS.iter().find(|(key, _)| key == k) {
            check_value(kind, v).map_err(|reason| Invalid {
                field: name,
                reason: format!("{v:?} is not valid: {reason}"),
            })?;
        }
    }
    Ok(())
}

fn check_value(kind: &Kind, v: &str) -> Result<(), String> {
    match kind {
        Kind::Duration => duration::parse(v).map(drop),
        Kind::Count => v
            .parse::<usize>()
            .map(drop)
            .map_err(|_| "give a whole number, 0 or more".into()),
        Kind::Port => v
            .parse::<u16>()
            .map(drop)
            .map_err(|_| "give a port number from 0 to 65535".into()),
        Kind::Bool => match v.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" | "false" | "0" | "no" | "off" => Ok(()),
            _ => Err("use true or false".into()),
        },
        Kind::Mode => WATCHDOG_MODES
            .contains(&v)
            .then_some(())
            .ok_or_else(|| format!("use one of {}", WATCHDOG_MODES.join(", "))),
        Kind::Url => {
            let host = v.strip_prefix("http://").unwrap_or("");
            let authority = host.split(['/', '?', '#']).next().unwrap_or("");
            (!authority.is_empty() && !v.contains(char::is_whitespace))
                .then_some(())
                .ok_or_else(|| "give an http:// URL with a host, like http://127.0.0.1:5000".into())
        }
        Kind::Ip => v
            .parse::<IpAddr>()
            .map(drop)
            .map_err(|_| "give an IP address such as 127.0.0.1".into()),
    }
}

/// Check a command line (`envProcess`, `fprocess`): it cannot hold a NUL byte.
pub fn check_command(field: &str, cmd: &str) -> Result<(), Invalid> {
    if cmd.contains('\0') {
        return Err(Invalid {
            field: field.to_string(),
            reason: "contains a NUL byte, which no command line can hold".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn accepts_what_the_watchdog_accepts() {
        let good = env(&[
            ("exec_timeout", "1m30s"),
            ("read_timeout", "5"),
            ("write_timeout", " 500ms "),
            ("healthcheck_interval", "0"),
            ("max_inflight", "4"),
            ("port", "0"),
            ("mode", "http"),
            ("upstream_url", "http://127.0.0.1:5000/x"),
            ("prefix_logs", "FALSE"),
            ("cgi_headers", "on"),
            ("bind_address", "::1"),
            ("content_type", "text/plain"),
            ("max_inflight_note", "anything"),
            ("port_unused", ""),
            ("exec_timeout_x", "banana"),
        ]);
        check_watchdog_env("envVars", &good).unwrap();
        check_watchdog_env("envVars", &env(&[("exec_timeout", "  ")])).unwrap();
    }

    #[test]
    fn names_the_bad_variable() {
        for (k, v) in [
            ("exec_timeout", "banana"),
            ("read_timeout", "-1s"),
            ("write_timeout", "10x"),
            ("healthcheck_interval", "1.5"),
            ("max_inflight", "-3"),
            ("log_buffer_size", "lots"),
            ("port", "99999"),
            ("mode", "static"),
            ("mode", "HTTP"),
            ("upstream_url", "https://x"),
            ("upstream_url", "http://"),
            ("prefix_logs", "maybe"),
            ("bind_address", "localhost"),
            ("A", "x\0y"),
            ("BLOB", &"x".repeat(128 * 1024)),
        ] {
            let e = check_watchdog_env("envVars", &env(&[(k, v)])).unwrap_err();
            assert_eq!(e.field, format!("envVars.{k}"), "{k}={v:?}: {e}");
        }
        assert_eq!(
            check_command("envProcess", "cat\0 /etc/shadow")
                .unwrap_err()
                .field,
            "envProcess"
        );
        check_command("envProcess", "wc -l").unwrap();
        let many: BTreeMap<String, String> = (0..9)
            .map(|i| (format!("V{i}"), "x".repeat(120 * 1024)))
            .collect();
        assert_eq!(
            check_watchdog_env("envVars", &many).unwrap_err().field,
            "envVars.V8"
        );
        check_watchdog_env("envVars", &many.into_iter().take(8).collect()).unwrap();
    }
}
