//! DKIM signing (RFC 6376) of mail our own users send, with mail-auth's signer.
//!
//! One key per domain (RSA with SHA-256, or Ed25519), read from a PEM file. The domain whose
//! key signs is the domain of the `From:` header, so the signature aligns for DMARC; a message
//! whose From domain has no key is sent unsigned.

use std::path::Path;

use backstop_types::Domain;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

/// The header fields signed, as RFC 6376 5.4.1 recommends; those a message lacks are skipped.
/// `From` is required and listed first.
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Resent-Date",
    "Resent-From",
    "Resent-To",
    "Resent-Cc",
    "In-Reply-To",
    "References",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// A domain's signing key.
pub struct DomainKey {
    pub domain: Domain,
    pub selector: String,
    signer: Signer,
}

enum Signer {
    Rsa(Box<DkimSigner<RsaKey<Sha256>, Done>>),
    Ed25519(Box<DkimSigner<Ed25519Key, Done>>),
}

impl std::fmt::Debug for DomainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithm = match self.signer {
            Signer::Rsa(_) => "rsa-sha256",
            Signer::Ed25519(_) => "ed25519-sha256",
        };
        write!(
            f,
            "DomainKey({}, {}, {algorithm})",
            self.domain, self.selector
        )
    }
}

impl DomainKey {
    /// Loads the private key in `key_file`: RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8), PEM.
    pub fn load(domain: Domain, selector: &str, key_file: &Path) -> Result<DomainKey, String> {
        let der = PrivateKeyDer::from_pem_file(key_file)
            .map_err(|e| format!("{}: not a PEM private key: {e}", key_file.display()))?;
        let signer = match &der {
            PrivateKeyDer::Pkcs8(pkcs8) => {
                match Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der()) {
                    Ok(key) => Signer::Ed25519(Box::new(configure(key, &domain, selector))),
                    Err(_) => Signer::Rsa(Box::new(configure(
                        rsa(der.clone_key(), key_file)?,
                        &domain,
                        selector,
                    ))),
                }
            }
            _ => Signer::Rsa(Box::new(configure(
                rsa(der.clone_key(), key_file)?,
                &domain,
                selector,
            ))),
        };
        Ok(DomainKey {
            domain,
            selector: selector.to_owned(),
            signer,
        })
    }

    /// The `DKIM-Signature:` header field, with its CRLF, to put on top of `message`.
    fn sign(&self, message: &[u8]) -> Result<String, String> {
        let signature = match &self.signer {
            Signer::Rsa(s) => s.sign(message),
            Signer::Ed25519(s) => s.sign(message),
        };
        signature
            .map(|s| s.to_header())
            .map_err(|e| format!("DKIM signing for {} failed: {e}", self.domain))
    }
}

fn rsa(der: PrivateKeyDer<'static>, key_file: &Path) -> Result<RsaKey<Sha256>, String> {
    RsaKey::<Sha256>::from_key_der(der).map_err(|e| {
        format!(
            "{}: neither an RSA nor an Ed25519 key: {e}",
            key_file.display()
        )
    })
}

fn configure<K: mail_auth::common::crypto::SigningKey>(
    key: K,
    domain: &Domain,
    selector: &str,
) -> DkimSigner<K, Done> {
    DkimSigner::from_key(key)
        .domain(domain.as_str())
        .selector(selector)
        .headers(SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// The signing keys, by domain.
#[derive(Debug, Default)]
pub struct Keys(Vec<DomainKey>);

impl Keys {
    pub fn new(keys: Vec<DomainKey>) -> Keys {
        Keys(keys)
    }

    /// The signature for `message` by the key of its From domain; `None` when that domain has
    /// no key (or the message has no From).
    pub fn sign(&self, message: &[u8]) -> Option<Result<String, String>> {
        let domain = from_domain(message)?;
        let key = self.0.iter().find(|k| k.domain == domain)?;
        Some(key.sign(message))
    }
}

/// The domain of the first address in the From header.
fn from_domain(message: &[u8]) -> Option<Domain> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let address = parsed.from()?.first()?.address()?;
    let (_, domain) = address.rsplit_once('@')?;
    Domain::parse(domain).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_from_domain_picks_the_key() {
        let message = b"From: Alice <alice@Example.TEST>\r\nTo: bob@example.net\r\n\r\nhi\r\n";
        assert_eq!(from_domain(message), Domain::parse("example.test").ok());
        assert_eq!(from_domain(b"To: bob@example.net\r\n\r\nhi\r\n"), None);
    }
}
