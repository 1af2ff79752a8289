//! The rustls server configuration: the certificate, and the server's order of cipher suites.

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
    use rustls::{
        ClientConfig, ClientConnection, RootCertStore, ServerConnection, SupportedProtocolVersion,
    };

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

    /// What the server offers, best first: only AEAD suites with forward secrecy (testssl.sh
    /// rates all of them best). A rustls upgrade that changes the list shows up here.
    #[test]
    fn the_suites_are_aead_with_forward_secrecy_best_first() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load(&self_signed(dir.path())).unwrap();
        let config = loaded.acceptor.config();
        assert!(config.ignore_client_order);
        let suites: Vec<String> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            suites,
            [
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            ]
        );
    }

    /// A client listing the suites worst first still gets the server's first choice, in
    /// TLS 1.3 and in TLS 1.2 (which is what testssl.sh's "server cipher order" checks).
    #[test]
    fn the_server_order_wins_over_the_clients() {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load(&self_signed(dir.path())).unwrap();
        let cert =
            CertificateDer::from_pem_file(dir.path().join("tls/selfsigned-cert.pem")).unwrap();
        for (version, expected) in [
            (&rustls::version::TLS13, "TLS13_AES_256_GCM_SHA384"),
            (
                &rustls::version::TLS12,
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            ),
        ] {
            for reversed in [false, true] {
                let server = handshake(&loaded.acceptor, client(cert.clone(), version, reversed));
                assert_eq!(
                    session_info(&server).cipher,
                    expected,
                    "{version:?}, client order reversed: {reversed}"
                );
            }
        }
    }

    fn self_signed(dir: &Path) -> CertSource {
        CertSource::SelfSigned {
            dir: dir.join("tls"),
            hostname: "mx.test".into(),
        }
    }

    /// A client that trusts `cert` for `mx.test`, offering `version` only and the ring
    /// suites in their order or `reversed`.
    fn client(
        cert: CertificateDer<'static>,
        version: &'static SupportedProtocolVersion,
        reversed: bool,
    ) -> ClientConnection {
        let mut provider = rustls::crypto::ring::default_provider();
        if reversed {
            provider.cipher_suites.reverse();
        }
        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        ClientConnection::new(Arc::new(config), "mx.test".try_into().unwrap()).unwrap()
    }

    /// Runs the handshake between `client` and a server connection of `acceptor` in memory.
    fn handshake(acceptor: &TlsAcceptor, mut client: ClientConnection) -> ServerConnection {
        let mut server = ServerConnection::new(Arc::clone(acceptor.config())).unwrap();
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return server;
            }
            let mut bytes = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut bytes).unwrap();
            }
            let mut input = &bytes[..];
            while !input.is_empty() {
                server.read_tls(&mut input).unwrap();
                server.process_new_packets().unwrap();
            }
            bytes.clear();
            while server.wants_write() {
                server.write_tls(&mut bytes).unwrap();
            }
            let mut input = &bytes[..];
            while !input.is_empty() {
                client.read_tls(&mut input).unwrap();
                client.process_new_packets().unwrap();
            }
        }
        panic!("the handshake did not finish in 10 round trips")
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
