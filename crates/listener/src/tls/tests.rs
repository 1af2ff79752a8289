//! Tests of the server config: the certificate it loads and the order of cipher suites.

use std::time::{SystemTime, UNIX_EPOCH};

use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConnection, SupportedProtocolVersion,
};

use super::*;

fn now() -> UnixTime {
    UnixTime(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
}

fn self_signed(dir: &Path) -> CertSource {
    CertSource::SelfSigned {
        dir: dir.join("tls"),
        hostname: "mx.test".into(),
    }
}

#[test]
fn self_signed_is_generated_once_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let source = self_signed(dir.path());
    let first = load(&source, now()).unwrap();
    assert_eq!(first.self_signed.unwrap().made, Made::Now);
    let pem = std::fs::read(dir.path().join("tls/selfsigned-cert.pem")).unwrap();
    let second = load(&source, now()).unwrap();
    assert_eq!(second.self_signed.unwrap().made, Made::Earlier);
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

/// One made over a year ago is expired now: load makes a new one, which a client that trusts
/// it takes for the host name today.
#[test]
fn an_expired_self_signed_certificate_is_replaced_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let source = self_signed(dir.path());
    let long_ago = UnixTime(now().0 - 400 * 86_400);
    let old = load(&source, long_ago).unwrap().self_signed.unwrap();
    let loaded = load(&source, now()).unwrap();
    let renewed = loaded.self_signed.unwrap();
    assert_eq!(
        renewed.made,
        Made::Renewed(Renewal::Expired {
            not_after: old.not_after
        })
    );
    assert!(renewed.not_after.0 > now().0 + 300 * 86_400);
    let cert = CertificateDer::from_pem_file(&renewed.cert).unwrap();
    let server = handshake(
        &loaded.acceptor,
        client(cert, &rustls::version::TLS13, false),
    );
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

/// Configured files are the admin's: used as they are, even expired.
#[test]
fn configured_files_are_never_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let expired = self_signed(dir.path());
    let made = load(&expired, UnixTime(now().0 - 400 * 86_400))
        .unwrap()
        .self_signed
        .unwrap();
    let (cert, key) = (
        std::fs::read(&made.cert).unwrap(),
        std::fs::read(&made.key).unwrap(),
    );
    let modified = std::fs::metadata(&made.cert).unwrap().modified().unwrap();
    let files = CertSource::Files {
        cert: made.cert.clone(),
        key: made.key.clone(),
    };
    let loaded = load(&files, now()).unwrap();
    assert!(loaded.self_signed.is_none());
    assert_eq!(std::fs::read(&made.cert).unwrap(), cert);
    assert_eq!(std::fs::read(&made.key).unwrap(), key);
    assert_eq!(
        std::fs::metadata(&made.cert).unwrap().modified().unwrap(),
        modified
    );
}

#[test]
fn a_missing_certificate_names_the_file() {
    let source = CertSource::Files {
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
    };
    let Err(err) = load(&source, now()) else {
        panic!("loading a missing file succeeded")
    };
    assert!(
        err.to_string().starts_with("/nonexistent/cert.pem: "),
        "{err}"
    );
}

/// What the server offers, best first: only AEAD suites with forward secrecy (testssl.sh
/// rates all of them best). A rustls upgrade that changes the list shows up here.
#[test]
fn the_suites_are_aead_with_forward_secrecy_best_first() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = load(&self_signed(dir.path()), now()).unwrap();
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

/// A client listing the suites worst first still gets the server's first choice, in TLS 1.3
/// and in TLS 1.2 (which is what testssl.sh's "server cipher order" checks).
#[test]
fn the_server_order_wins_over_the_clients() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = load(&self_signed(dir.path()), now()).unwrap();
    let cert = CertificateDer::from_pem_file(dir.path().join("tls/selfsigned-cert.pem")).unwrap();
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

/// A client that trusts `cert` for `mx.test`, offering `version` only and the ring suites in
/// their order or `reversed`.
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
