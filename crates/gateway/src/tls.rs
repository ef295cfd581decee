//! HTTPS at the gateway (`virga up --tls-cert FILE --tls-key FILE`): rustls on the ring
//! provider, offering ALPN `h2` and `http/1.1`, so the same listener serves HTTP/2 over TLS
//! (gRPC with TLS) and HTTPS/1.1. The files are read once at start, and a bad one stops the
//! start with an error that names it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// `the TLS certificate (--tls-cert)` or `the TLS key (--tls-key)`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM section of the kind needed.
    #[error("{} is not a PEM {what}: {detail}", path.display())]
    Pem {
        /// What it should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// rustls refused the pair (the key is not the certificate's, or of an unsupported kind).
    #[error("the TLS key {} does not fit the certificate {}: {source}", key.display(), cert.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
}

/// The gateway's TLS settings, ready to accept connections with.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Load the certificate chain `cert` (PEM, the server's certificate first) and its
    /// private key `key` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: &Path, key: &Path) -> Result<Tls, TlsError> {
        let chain = read_chain(cert)?;
        let private = read_key(key)?;
        let pair = |source| TlsError::Pair {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            source,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(pair)?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(pair)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The server side of a TLS handshake on `io`.
    pub(crate) async fn accept<IO>(&self, io: IO) -> std::io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.acceptor.accept(io).await
    }
}

const CERT: &str = "the TLS certificate (--tls-cert)";
const KEY: &str = "the TLS key (--tls-key)";

fn read(what: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
}

fn bad_pem(what: &'static str, path: &Path, e: pem::Error) -> TlsError {
    let detail = match e {
        pem::Error::NoItemsFound => "no such PEM section in it".to_string(),
        e => e.to_string(),
    };
    TlsError::Pem {
        what,
        path: path.to_path_buf(),
        detail,
    }
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let text = read(CERT, path)?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem("certificate", path, e))?;
    if chain.is_empty() {
        return Err(bad_pem("certificate", path, pem::Error::NoItemsFound));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = read(KEY, path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| bad_pem("private key", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem\n").unwrap();
        let e = Tls::load(&missing, &junk).unwrap_err().to_string();
        assert!(e.contains("--tls-cert") && e.contains("missing.pem"), "{e}");
        let e = Tls::load(&junk, &junk).unwrap_err().to_string();
        assert!(e.contains("junk.pem is not a PEM certificate"), "{e}");
    }
}
