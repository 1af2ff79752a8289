//! The rustls server configuration.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backstop_types::TlsInfo;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
pub use tokio_rustls::TlsAcceptor;

/// Where the server certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// PEM files from the config: the chain (leaf first) and its private key.
    Files { cert: PathBuf, key: PathBuf },
    /// None configured: a self-signed certificate for `hostname`, generated on first start and
    /// kept in `dir` so it stays the same across restarts.
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
}

/// The acceptor, and whether a self-signed certificate was generated just now (to log it).
pub struct Loaded {
    pub acceptor: TlsAcceptor,
    pub generated: Option<PathBuf>,
}

pub fn load(source: &CertSource) -> Result<Loaded, TlsError> {
    let (cert, key, generated) = match source {
        CertSource::Files { cert, key } => (cert.clone(), key.clone(), None),
        CertSource::SelfSigned { dir, hostname } => {
            let cert = dir.join("selfsigned-cert.pem");
            let key = dir.join("selfsigned-key.pem");
            let generated = if cert.exists() && key.exists() {
                None
            } else {
                generate(dir, &cert, &key, hostname)?;
                Some(cert.clone())
            };
            (cert, key, generated)
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
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)?;
    Ok(Loaded {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        generated,
    })
}

fn generate(dir: &Path, cert: &Path, key: &Path, hostname: &str) -> Result<(), TlsError> {
    let io_err = |file: &Path, e: io::Error| TlsError::File {
        file: file.to_owned(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let pair = rcgen::generate_simple_self_signed(vec![hostname.to_owned()])?;
    write_private(key, pair.signing_key.serialize_pem().as_bytes()).map_err(|e| io_err(key, e))?;
    std::fs::write(cert, pair.cert.pem()).map_err(|e| io_err(cert, e))?;
    Ok(())
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
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
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let source = CertSource::SelfSigned {
            dir: dir.path().join("tls"),
            hostname: "mx.test".into(),
        };
        let first = load(&source).unwrap();
        assert!(first.generated.is_some());
        let pem = std::fs::read(dir.path().join("tls/selfsigned-cert.pem")).unwrap();
        let second = load(&source).unwrap();
        assert!(second.generated.is_none());
        assert_eq!(
            pem,
            std::fs::read(dir.path().join("tls/selfsigned-cert.pem")).unwrap()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls/selfsigned-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_missing_certificate_names_the_file() {
        let source = CertSource::Files {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        };
        let Err(err) = load(&source) else {
            panic!("loading a missing file succeeded")
        };
        assert!(
            err.to_string().starts_with("/nonexistent/cert.pem: "),
            "{err}"
        );
    }
}
