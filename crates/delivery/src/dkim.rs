//! DKIM signing (RFC 6376) of mail our own users send, and of our delivery reports, with
//! mail-auth's signer.
//!
//! One key per domain (RSA with SHA-256, or Ed25519), read from a PEM file. A user's message
//! is signed by the key of its `From:` domain, so the signature aligns for DMARC; a message
//! whose From domain has no key is sent unsigned. A report (From `MAILER-DAEMON@` our host
//! name) is signed by the key of the host's domain or of its closest parent that has one
//! (`mx1.example.com` by `example.com`'s key), which aligns under DMARC's relaxed alignment.
//!
//! The header field mail-auth writes is folded again at its end (`close_b_tag`) so that
//! dkimpy, Mail::DKIM and OpenDKIM all verify it.

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

/// Why a DKIM key could not be loaded or a message not signed.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("{file}: not a PEM private key: {reason}")]
    NotPem { file: String, reason: String },
    #[error("{file}: neither an RSA nor an Ed25519 key: {reason}")]
    NotAKey { file: String, reason: String },
    #[error("DKIM signing for {domain} failed: {reason}")]
    Signing { domain: String, reason: String },
}

impl DomainKey {
    /// Loads the private key in `key_file`: RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8), PEM.
    pub fn load(domain: Domain, selector: &str, key_file: &Path) -> Result<DomainKey, DkimError> {
        let der = PrivateKeyDer::from_pem_file(key_file).map_err(|e| DkimError::NotPem {
            file: key_file.display().to_string(),
            reason: e.to_string(),
        })?;
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
    fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        let signature = match &self.signer {
            Signer::Rsa(s) => s.sign(message),
            Signer::Ed25519(s) => s.sign(message),
        };
        signature
            .map(|s| close_b_tag(s.to_header()))
            .map_err(|e| DkimError::Signing {
                domain: self.domain.to_string(),
                reason: e.to_string(),
            })
    }
}

/// Takes out the whitespace between the end of the `b=` value and the closing `;` of a
/// `DKIM-Signature:` field as mail-auth 0.13.3 writes it.
///
/// mail-auth folds `b=` (the last tag) into lines of 76 columns and folds after a full line,
/// so when the value ends exactly at a line's end the field ends in `<value> CRLF TAB ;`.
/// Whether it does depends on the signature's length and where `b=` starts, which moves with
/// the `h=` list (which signed header fields the message has, and their order): a 2048-bit
/// RSA signature's 344 characters end a line when they start at column 32.
///
/// RFC 6376 3.7 hashes the field "with the value of the b= tag (including all surrounding
/// whitespace) deleted", and mail-auth hashed `b=;`, so that fold is outside the signature and
/// may go. Mail::DKIM and OpenDKIM delete it; dkimpy (1.1.4) deletes only the whitespace
/// *before* each base64 character of the value (its `RE_BTAG`), keeps the fold after the last
/// one, and hashes `b= ;` (relaxed canonicalisation, 3.4.2, turns the fold into a space): a
/// signature that fails. With the `;` right after the last character every reading is `b=;`.
///
/// Nothing else is folded again: everywhere outside `b=` the whitespace is hashed (relaxed
/// canonicalisation only shortens a run to one space, 3.4.2), and mail-auth hashed a space
/// exactly where it folds, so any other change would break the signature for everyone.
fn close_b_tag(header: String) -> String {
    // The value runs from the last `b=` (after `bh=`, whose value is base64 too) to the `;`
    // that ends the field.
    let Some(start) = header.rfind("; b=").map(|at| at + "; b=".len()) else {
        return header;
    };
    let Some(value) = header[start..].strip_suffix(";\r\n") else {
        return header;
    };
    let base64_or_fws = |c: char| c.is_ascii_alphanumeric() || "+/= \t\r\n".contains(c);
    if !value.chars().all(base64_or_fws) {
        // Not the layout this was written for: leave it as mail-auth made it.
        return header;
    }
    let value = value.trim_end_matches([' ', '\t', '\r', '\n']);
    format!("{}{value};\r\n", &header[..start])
}

fn rsa(der: PrivateKeyDer<'static>, key_file: &Path) -> Result<RsaKey<Sha256>, DkimError> {
    RsaKey::<Sha256>::from_key_der(der).map_err(|e| DkimError::NotAKey {
        file: key_file.display().to_string(),
        reason: e.to_string(),
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
    pub fn sign(&self, message: &[u8]) -> Option<Result<String, DkimError>> {
        let domain = from_domain(message)?;
        let key = self.0.iter().find(|k| k.domain == domain)?;
        Some(key.sign(message))
    }

    /// The signature for a delivery report by the key of its From domain (our host name) or,
    /// when that has none, of the closest parent domain that has one; `None` when none has.
    ///
    /// The usual setup has a key for the organisation's domain and a host name below it
    /// (`mx1.example.com`, `[[dkim]] domain = "example.com"`): the report from
    /// `MAILER-DAEMON@mx1.example.com` is signed `d=example.com`. Both have the
    /// organisational domain `example.com`, so DKIM aligns for DMARC in relaxed mode (RFC 7489
    /// 3.1.1), the default; a domain with `adkim=s` needs a key for the host name itself,
    /// which is preferred when there is one.
    pub fn sign_report(&self, message: &[u8]) -> Option<Result<String, DkimError>> {
        let from = from_domain(message)?;
        let key = report_domains(&from)
            .find_map(|name| self.0.iter().find(|k| k.domain.as_str() == name))?;
        Some(key.sign(message))
    }
}

/// The domains whose key may sign a report from `host`, closest first: the host name, then
/// its parents, each of at least two labels. Without a public-suffix list, two labels is where
/// the walk stops: a single-label name (`com`) is a public suffix or a local name for certain,
/// and a longer suffix (`co.uk` above `example.co.uk`) can only have a key here by mistake (its
/// owner publishes the public key) and would not align anyway.
fn report_domains(host: &Domain) -> impl Iterator<Item = &str> {
    let host = host.as_str();
    // An address literal has no parents, and no key.
    let name = (!host.starts_with('[')).then_some(host);
    std::iter::successors(name, |name| name.split_once('.').map(|(_, parent)| parent))
        .take_while(|name| name.contains('.'))
}

/// The domain of the first address in the From header.
fn from_domain(message: &[u8]) -> Option<Domain> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let address = parsed.from()?.first()?.address()?;
    let (_, domain) = address.rsplit_once('@')?;
    Domain::parse(domain).ok()
}

#[cfg(test)]
mod tests;
