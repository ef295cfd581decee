//! How long an upgraded connection (a WebSocket, any HTTP/1.1 `Upgrade`) to a function may
//! live, from its annotations: `virga.connection.idle-timeout` (no bytes either way for that
//! long closes it; default 10 min), `virga.connection.max-lifetime` (closed that long after
//! it opened; default none) and `virga.connection.drain-grace` (how long an instance being
//! removed lets its open connections go on before they are closed; default 30 s). Values are
//! [`crate::duration`]s; `0` turns the idle timeout or the lifetime off, and closes drained
//! connections at once.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{duration, Invalid};

/// Annotation: close a connection after this long without a byte either way.
pub const IDLE_TIMEOUT_ANNOTATION: &str = "virga.connection.idle-timeout";
/// Annotation: close a connection this long after it opened.
pub const MAX_LIFETIME_ANNOTATION: &str = "virga.connection.max-lifetime";
/// Annotation: how long a removed instance's connections may go on before they are closed.
pub const DRAIN_GRACE_ANNOTATION: &str = "virga.connection.drain-grace";

/// The idle timeout unless a function sets one.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// The drain grace unless a function sets one.
pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(30);

/// A function's limits on its upgraded connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Close after this long without a byte either way (`None`: never).
    pub idle_timeout: Option<Duration>,
    /// Close this long after opening (`None`: never).
    pub max_lifetime: Option<Duration>,
    /// How long a removed instance's connections may go on.
    pub drain_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_lifetime: None,
            drain_grace: DEFAULT_DRAIN_GRACE,
        }
    }
}

impl ConnectionLimits {
    /// The limits a function's `annotations` set, or which annotation is not a duration.
    pub fn from_annotations(
        annotations: Option<&BTreeMap<String, String>>,
    ) -> Result<ConnectionLimits, Invalid> {
        let mut limits = ConnectionLimits::default();
        let Some(ann) = annotations else {
            return Ok(limits);
        };
        let get = |key: &str| -> Result<Option<Duration>, Invalid> {
            let Some(v) = ann.get(key) else {
                return Ok(None);
            };
            duration::parse(v).map(Some).map_err(|reason| Invalid {
                field: format!("annotations.{key}"),
                reason,
            })
        };
        if let Some(d) = get(IDLE_TIMEOUT_ANNOTATION)? {
            limits.idle_timeout = (!d.is_zero()).then_some(d);
        }
        if let Some(d) = get(MAX_LIFETIME_ANNOTATION)? {
            limits.max_lifetime = (!d.is_zero()).then_some(d);
        }
        if let Some(d) = get(DRAIN_GRACE_ANNOTATION)? {
            limits.drain_grace = d;
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(
            ConnectionLimits::from_annotations(None).unwrap(),
            ConnectionLimits::default()
        );
        let l = ConnectionLimits::from_annotations(Some(&ann(&[
            (IDLE_TIMEOUT_ANNOTATION, "0"),
            (MAX_LIFETIME_ANNOTATION, "2h"),
            (DRAIN_GRACE_ANNOTATION, "1.5s"),
        ])))
        .unwrap();
        assert_eq!(l.idle_timeout, None);
        assert_eq!(l.max_lifetime, Some(Duration::from_secs(7200)));
        assert_eq!(l.drain_grace, Duration::from_millis(1500));
    }

    #[test]
    fn a_bad_value_names_its_annotation() {
        for key in [
            IDLE_TIMEOUT_ANNOTATION,
            MAX_LIFETIME_ANNOTATION,
            DRAIN_GRACE_ANNOTATION,
        ] {
            let e = ConnectionLimits::from_annotations(Some(&ann(&[(key, "soon")]))).unwrap_err();
            assert_eq!(e.field, format!("annotations.{key}"));
            assert!(e.reason.contains("not a duration"), "{}", e.reason);
        }
    }
}
