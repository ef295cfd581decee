//! Content-addressed function bundles: code built by `virga build` is a gzip'd tar whose
//! SHA-256 names it. A deployment refers to one with the image `virga.local/NAME@sha256:HEX`.

use std::fmt;

/// Registry host that marks an image as a local bundle.
pub const BUNDLE_HOST: &str = "virga.local";

/// File at the root of a bundle saying how the watchdog runs it.
pub const BUNDLE_MANIFEST: &str = "virga-bundle.json";

/// A parsed `virga.local/NAME@sha256:HEX` image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRef {
    /// Human name part (informative only).
    pub name: String,
    /// Lower-case hex SHA-256 of the bundle archive.
    pub digest: String,
}

impl BundleRef {
    /// Parse an image string; `None` when it is not a local bundle reference.
    pub fn parse(image: &str) -> Option<BundleRef> {
        let rest = image.strip_prefix(BUNDLE_HOST)?.strip_prefix('/')?;
        let (name, digest) = rest.split_once("@sha256:")?;
        if !is_sha256_hex(digest) {
            return None;
        }
        Some(BundleRef {
            name: name.to_string(),
            digest: digest.to_string(),
        })
    }
}

impl fmt::Display for BundleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{BUNDLE_HOST}/{}@sha256:{}", self.name, self.digest)
    }
}

/// True for 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `virga-bundle.json`: the watchdog environment a template asks for
/// (`fprocess`, `mode`, `upstream_url`, ...), applied before the function's own envVars.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BundleManifest {
    /// Template language the bundle was built from.
    #[serde(default)]
    pub lang: String,
    /// Watchdog environment.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
}

/// Serde helper: bytes as standard base64 (OpenFaaS's `rawValue`).
pub(crate) mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = Option::<String>::deserialize(d)?.unwrap_or_default();
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("rawValue is not base64: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_bundle_refs() {
        let hex = "a".repeat(64);
        let r = BundleRef::parse(&format!("virga.local/hello@sha256:{hex}")).unwrap();
        assert_eq!(r.name, "hello");
        assert_eq!(r.to_string(), format!("virga.local/hello@sha256:{hex}"));
        assert!(BundleRef::parse("docker.io/hello:latest").is_none());
        assert!(BundleRef::parse("virga.local/hello@sha256:ABC").is_none());
    }
}
