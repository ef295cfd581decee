//! TLS for the brokers' connections (`mqtts://`, NATS `tls://` or a server that requires it):
//! rustls on ring, the workspace's provider, trusting the CA file given (else the system's
//! roots), with an optional client certificate and key (mutual TLS). A broker certificate
//! that does not verify is a log line naming the host, the roots and the flag to fix it, on
//! every attempt (the clients themselves only say "TLS error").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// The files a broker's TLS uses; all optional.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// PEM CA certificates to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate (chain) for mutual TLS; needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any file is given (then the connection must be TLS).
    pub fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

/// The client config for `connector` (`mqtt`, `nats`) from `files`; an error names the file
/// and the flag.
pub(crate) fn client_config(
    connector: &'static str,
    files: &TlsFiles,
) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let trusted = match &files.ca {
        Some(path) => {
            let certs = pem_certs(path).map_err(|e| format!("--{connector}-ca {e}"))?;
            roots.add_parsable_certificates(certs);
            if roots.is_empty() {
                return Err(format!(
                    "--{connector}-ca {}: no usable CA certificate in it",
                    path.display()
                ));
            }
            format!("the CA in {}", path.display())
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            "the system's trusted roots".to_string()
        }
    };
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("{connector} TLS roots: {e}"))?;
    let verifier = Arc::new(Explained {
        inner,
        connector,
        trusted,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{connector} TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&files.cert, &files.key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = pem_certs(cert).map_err(|e| format!("--{connector}-cert {e}"))?;
            if chain.is_empty() {
                return Err(format!(
                    "--{connector}-cert {}: no PEM certificate in it",
                    cert.display()
                ));
            }
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("--{connector}-key {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("--{connector}-cert and --{connector}-key: {e}"))?
        }
        _ => {
            return Err(format!(
                "--{connector}-cert and --{connector}-key go together (the client certificate \
                 and its private key)"
            ))
        }
    };
    Ok(Arc::new(config))
}

fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The webpki verifier, explaining a refusal in the log.
#[derive(Debug)]
struct Explained {
    inner: Arc<WebPkiServerVerifier>,
    connector: &'static str,
    /// What the roots are, for the log line.
    trusted: String,
}

impl ServerCertVerifier for Explained {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if let Err(e) = &verdict {
            let (c, host) = (self.connector, server_name.to_str());
            match e {
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                ) => tracing::error!(
                    "{c} connector: the TLS certificate of {host} does not name {host} ({e}): \
                     put a host name the broker's certificate names in the URL"
                ),
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature,
                ) => tracing::error!(
                    "{c} connector: the TLS certificate of {host} is not signed by {} ({e}): \
                     give --{c}-ca the CA that signed the broker's certificate",
                    self.trusted
                ),
                _ => tracing::error!(
                    "{c} connector: the TLS certificate of {host} is refused ({e}); trusted: {}",
                    self.trusted
                ),
            }
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
