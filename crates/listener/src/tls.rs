//! The rustls server configuration: the certificate (from files, or self-signed in
//! `self_signed`), and the server's order of cipher suites.

mod self_signed;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backstop_types::{TlsInfo, UnixTime};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
pub use self_signed::{Made, Renewal, SelfSigned};
pub use tokio_rustls::TlsAcceptor;

/// Where the server certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files from the config: the chain (leaf first) and its private key. Never written
    /// here: they are the admin's (or their ACME client's).
    Files { cert: PathBuf, key: PathBuf },
    /// None configured: a self-signed certificate for `hostname`, kept in `dir` so it stays
    /// the same across restarts, and made again at load when it expires within 60 days or
    /// was made for another host name.
    SelfSigned { dir: PathBuf, hostname: String },
}

/// A certificate or key that cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{file}: {message}")]
    File { file: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("generating a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("generating a self-signed certificate: the clock ({0} s after 1970) is past what a certificate can carry")]
    Clock(u64),
}

/// The acceptor, and the self-signed certificate it uses, if it does (to log how it came to
/// be).
pub struct Loaded {
    pub acceptor: TlsAcceptor,
    pub self_signed: Option<SelfSigned>,
}

/// The server config for `source` at `now`. For `CertSource::SelfSigned` this writes a
/// certificate when there is none that will do.
pub fn load(source: &CertSource, now: UnixTime) -> Result<Loaded, TlsError> {
    let (cert, key, self_signed) = match source {
        CertSource::Files { cert, key } => (cert.clone(), key.clone(), None),
        CertSource::SelfSigned { dir, hostname } => {
            let made = self_signed::ensure(dir, hostname, now)?;
            (made.cert.clone(), made.key.clone(), Some(made))
        }
    };
    let file_err = |file: &Path, message: String| TlsError::File {
        file: file.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| file_err(&cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(&cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err(&cert, "no CERTIFICATE block found".into()));
    }
    let private_key =
        PrivateKeyDer::from_pem_file(&key).map_err(|e| file_err(&key, e.to_string()))?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)?;
    // Our order of cipher suites, not the client's: a client that lists a weaker suite first
    // must not get it while a stronger one is common to both (testssl.sh calls a server
    // without an order HIGH). The ring provider's list is best first already: AES-256-GCM,
    // AES-128-GCM, ChaCha20-Poly1305, for TLS 1.3 and then for TLS 1.2 with ECDHE. Every
    // suite rustls has is an AEAD with forward secrecy (no CBC, RC4 or RSA key exchange), so
    // there is nothing to filter out; the tests pin the list.
    config.ignore_client_order = true;
    Ok(Loaded {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        self_signed,
    })
}

/// What the handshake agreed on, for `Received:` and the envelope.
pub fn session_info(conn: &rustls::ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_owned(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map_or_else(|| "unknown".to_owned(), |s| format!("{:?}", s.suite()));
    TlsInfo { version, cipher }
}

#[cfg(test)]
mod tests;
