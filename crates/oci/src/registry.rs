//! Talking to registries through `oci-client`: which ones may be spoken to over plain HTTP,
//! one client per operation and credentials (so one function's credentials never serve
//! another's pull), and the registry's answers turned into [`OciError`]s naming the
//! reference and host.

use std::net::IpAddr;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::Reference;

use crate::auth::{normalize_host, Credentials};
use crate::{OciError, Result};

/// Which registries may be spoken to over plain HTTP: those on loopback always, others only
/// when named (as Docker's `--insecure-registry HOST`).
#[derive(Debug, Clone, Default)]
pub struct InsecureRegistries {
    hosts: Vec<String>,
}

impl InsecureRegistries {
    /// Allow plain HTTP to `hosts` (`host` or `host:port`, as in image references).
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(hosts: I) -> InsecureRegistries {
        InsecureRegistries {
            hosts: hosts
                .into_iter()
                .map(|h| normalize_host(h.as_ref()))
                .collect(),
        }
    }

    /// Whether `registry` (a reference's host, with its port if any) is spoken to over HTTP.
    pub fn allows_http(&self, registry: &str) -> bool {
        let registry = normalize_host(registry);
        is_loopback(&registry) || self.hosts.contains(&registry)
    }
}

/// Whether `registry` names this machine: `localhost` or a loopback address, any port.
fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Parse an image reference: `host[:port]/repo:tag`, `...@sha256:HEX`, or a Docker Hub short
/// name (`alpine` is `docker.io/library/alpine:latest`).
pub fn parse_reference(reference: &str) -> Result<Reference> {
    let bad = |detail: String| OciError::BadReference {
        reference: reference.to_string(),
        detail,
    };
    let parsed: Reference = reference.parse().map_err(|e| bad(format!("{e}")))?;
    if let Some(d) = parsed.digest() {
        if crate::digest::Digest::parse(d).is_none() {
            return Err(bad(format!(
                "{d} is not a sha256 digest (sha256: and 64 lower-case hex digits)"
            )));
        }
    }
    Ok(parsed)
}

/// One conversation with one registry, as one user (or anonymous).
pub(crate) struct Session {
    pub(crate) client: oci_client::Client,
    pub(crate) auth: oci_client::secrets::RegistryAuth,
    registry: String,
    user: Option<String>,
    https: bool,
}

impl Session {
    /// A client for `reference`'s registry, over HTTP only where `insecure` allows it.
    pub(crate) async fn new(
        reference: &Reference,
        creds: Option<&Credentials>,
        insecure: &InsecureRegistries,
    ) -> Result<Session> {
        // reqwest is built without a crypto provider of its own: use ring, as the rest of the
        // workspace does (an error only says one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registry = reference.registry().to_string();
        let https = !insecure.allows_http(&registry);
        let config = ClientConfig {
            protocol: if https {
                ClientProtocol::Https
            } else {
                ClientProtocol::Http
            },
            platform_resolver: None,
            // One PUT per blob, streamed, instead of a PATCH per chunk.
            use_monolithic_push: true,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("virga/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = oci_client::Client::try_from(config).map_err(|e| OciError::Unreachable {
            registry: registry.clone(),
            detail: format!("cannot set up an HTTP client: {e}"),
        })?;
        let auth = Credentials::to_registry_auth(creds);
        // Every call then uses them, blob HEADs and GETs included.
        client
            .store_auth_if_needed(reference.resolve_registry(), &auth)
            .await;
        Ok(Session {
            client,
            auth,
            registry,
            user: creds.map(|c| c.username.clone()),
            https,
        })
    }

    /// Turn `oci-client`'s error for `what` (a reference or blob) into ours.
    pub(crate) fn error(&self, what: &str, e: OciDistributionError) -> OciError {
        use OciDistributionError as E;
        match e {
            E::RegistryError { envelope, .. } => {
                let detail = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                match envelope.errors.first().map(|e| &e.code) {
                    Some(
                        OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound,
                    ) => self.status(what, 404, detail),
                    Some(OciErrorCode::Unauthorized) => self.status(what, 401, detail),
                    Some(OciErrorCode::Denied) => self.status(what, 403, detail),
                    _ => self.status(what, 502, detail),
                }
            }
            E::ServerError { code, message, .. } => self.status(what, code, message),
            E::UnauthorizedError { .. } => self.status(what, 401, String::new()),
            E::AuthenticationFailure(reason) => self.status(what, 401, reason),
            E::DigestError(d) => OciError::DigestMismatch {
                what: what.to_string(),
                expected: String::new(),
                actual: d.to_string(),
            },
            E::RequestError(e) => match e.status() {
                Some(s) => self.status(what, s.as_u16(), e.to_string()),
                None => self.unreachable(&e),
            },
            other => self.status(what, 502, other.to_string()),
        }
    }

    /// A download that broke off.
    pub(crate) fn broken(&self, what: &str, e: &std::io::Error) -> OciError {
        OciError::Unreachable {
            registry: self.registry.clone(),
            detail: format!("reading {what}: {e}"),
        }
    }

    fn status(&self, what: &str, code: u16, detail: String) -> OciError {
        let detail: String = detail.trim().chars().take(300).collect();
        let registry = self.registry.clone();
        let reference = what.to_string();
        match code {
            404 => OciError::NotFound {
                reference,
                detail: if detail.is_empty() {
                    format!("{registry} answered 404")
                } else {
                    detail
                },
            },
            401 => OciError::Unauthorized {
                registry,
                reference,
                detail: match &self.user {
                    Some(u) => format!("the credentials of user {u:?} were refused {detail}"),
                    None => "it needs credentials: deploy with registryAuth (faas-cli deploy \
                             --send-registry-auth) or log in to it (docker login, faas-cli \
                             registry-login)"
                        .to_string(),
                }
                .trim()
                .to_string(),
            },
            403 => OciError::Forbidden {
                registry,
                reference,
                detail,
            },
            _ => OciError::Unreachable {
                registry,
                detail: format!("answered {code} for {reference}: {detail}"),
            },
        }
    }

    fn unreachable(&self, e: &(dyn std::error::Error + 'static)) -> OciError {
        let mut detail = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        if self.https {
            detail.push_str(&format!(
                " (over HTTPS; a registry that serves plain HTTP must be named as insecure: \
                 --insecure-registry {})",
                self.registry
            ));
        }
        OciError::Unreachable {
            registry: self.registry.clone(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback_or_when_named() {
        let none = InsecureRegistries::default();
        for host in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(none.allows_http(host), "{host}");
        }
        for host in [
            "10.0.0.1:5000",
            "registry.example.com",
            "docker.io",
            "localhost.evil.com",
        ] {
            assert!(!none.allows_http(host), "{host}");
        }
        let named = InsecureRegistries::new(["registry.lan:5000"]);
        assert!(named.allows_http("registry.lan:5000"));
        assert!(!named.allows_http("registry.lan"));
    }

    #[test]
    fn references_normalize_as_docker_does() {
        let r = parse_reference("alpine").unwrap();
        assert_eq!(r.whole(), "docker.io/library/alpine:latest");
        let r = parse_reference("127.0.0.1:5000/fn/hello:v1").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "fn/hello", Some("v1"))
        );
        let hex = "a".repeat(64);
        let r = parse_reference(&format!("localhost:5000/x@sha256:{hex}")).unwrap();
        assert_eq!(r.digest(), Some(format!("sha256:{hex}").as_str()));
        for bad in ["fn/UPPER", "x@sha256:abc", "a b", ""] {
            assert!(
                matches!(parse_reference(bad), Err(OciError::BadReference { .. })),
                "{bad}"
            );
        }
    }
}
