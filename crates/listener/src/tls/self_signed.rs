//! The self-signed certificate used when none is configured: made for the configured host
//! name (subject CN and SAN), valid for a year, kept under the data directory so that it stays
//! the same across restarts, and made again at load when it will not do any more (expired or
//! about to, made for another host name, or by an older backstop).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use backstop_types::UnixTime;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use super::TlsError;

const DAY: u64 = 86_400;

/// How long a new certificate is valid: a year, the lifetime admins know from CA-issued
/// certificates, and well under the 825 days from which testssl.sh calls a lifetime too long
/// (it says HIGH from ten years, which is what rcgen's default of 1975 to 4096 earned). A
/// longer one gains nothing, as it is renewed at start.
const LIFETIME: u64 = 365 * DAY;

/// How far back a new certificate's validity starts, so that a client whose clock is behind
/// ours does not see a certificate that is not valid yet.
const BACKDATE: u64 = DAY;

/// A certificate that expires within this is renewed at load. 60 days is where testssl.sh
/// starts to warn ("expires < 60 days", MEDIUM; HIGH under 30), and leaves a server that is
/// restarted or reloaded only every month or two the chance to renew before the date.
const RENEW_BEFORE: u64 = 60 * DAY;

const CERT_FILE: &str = "selfsigned-cert.pem";
const KEY_FILE: &str = "selfsigned-key.pem";

/// The self-signed certificate in use, and how it came to be at this load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfSigned {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub not_after: UnixTime,
    pub made: Made,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Made {
    /// At an earlier load, and still good.
    Earlier,
    /// Now, with a new key: there was none.
    Now,
    /// Now, with the key of the one that would not do any more: a DANE record for the key
    /// (TLSA 3 1 1, the usual one for a self-signed certificate) stays right.
    Renewed(Renewal),
}

/// Why the certificate made earlier was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    Expired {
        not_after: UnixTime,
    },
    /// Expires within `RENEW_BEFORE`.
    ExpiresSoon {
        not_after: UnixTime,
    },
    /// Its validity starts later than now: the clock was wrong when it was made.
    NotYetValid {
        not_before: UnixTime,
    },
    /// Valid for longer than one made now: an older backstop made it (rcgen's defaults,
    /// 1975 to 4096, with the CN "rcgen self signed cert").
    TooLong {
        days: u64,
    },
    /// Made for another host name (`hostname` changed since), or without its name.
    OtherHost {
        common_name: Option<String>,
    },
}

impl fmt::Display for Renewal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Renewal::Expired { not_after } => write!(f, "expired {}", not_after.to_rfc5322()),
            Renewal::ExpiresSoon { not_after } => {
                write!(f, "expires {}", not_after.to_rfc5322())
            }
            Renewal::NotYetValid { not_before } => {
                write!(f, "not valid before {}", not_before.to_rfc5322())
            }
            Renewal::TooLong { days } => {
                write!(
                    f,
                    "valid for {days} days, longer than backstop makes them now"
                )
            }
            Renewal::OtherHost {
                common_name: Some(name),
            } => write!(f, "made for {name}"),
            Renewal::OtherHost { common_name: None } => write!(f, "made without a host name"),
        }
    }
}

/// The certificate under `dir` for `hostname` at `now`: the one made earlier if it will still
/// do, else a new one (with the old key, if there is one).
pub(super) fn ensure(dir: &Path, hostname: &str, now: UnixTime) -> Result<SelfSigned, TlsError> {
    let cert = dir.join(CERT_FILE);
    let key = dir.join(KEY_FILE);
    // Either missing is a first start, or a first start that did not finish (the key is
    // written first): start again.
    if !(cert.exists() && key.exists()) {
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        let pair = KeyPair::generate()?;
        write_private(&key, pair.serialize_pem().as_bytes()).map_err(|e| file_err(&key, e))?;
        let not_after = issue(&cert, hostname, &pair, now)?;
        return Ok(SelfSigned {
            cert,
            key,
            not_after,
            made: Made::Now,
        });
    }
    let found = Facts::read(&cert)?;
    let Some(reason) = found.renewal(hostname, now) else {
        return Ok(SelfSigned {
            cert,
            key,
            not_after: found.not_after,
            made: Made::Earlier,
        });
    };
    let pem = std::fs::read_to_string(&key).map_err(|e| file_err(&key, e))?;
    let pair = KeyPair::from_pem(&pem).map_err(|e| TlsError::File {
        file: key.clone(),
        message: e.to_string(),
    })?;
    let not_after = issue(&cert, hostname, &pair, now)?;
    Ok(SelfSigned {
        cert,
        key,
        not_after,
        made: Made::Renewed(reason),
    })
}

/// What the renewal looks at in a certificate.
#[derive(Debug)]
struct Facts {
    not_before: UnixTime,
    not_after: UnixTime,
    common_name: Option<String>,
    dns_names: Vec<String>,
}

impl Facts {
    /// From the first certificate in the PEM file `path`.
    fn read(path: &Path) -> Result<Facts, TlsError> {
        let err = |message: String| TlsError::File {
            file: path.to_owned(),
            message,
        };
        let der = CertificateDer::from_pem_file(path).map_err(|e| err(e.to_string()))?;
        Facts::parse(&der).map_err(err)
    }

    fn parse(der: &[u8]) -> Result<Facts, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
        let validity = cert.validity();
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let dns_names = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(name) => Some((*name).to_owned()),
                    _ => None,
                })
                .collect(),
            Ok(None) => Vec::new(),
            Err(e) => return Err(e.to_string()),
        };
        Ok(Facts {
            not_before: unix_time(validity.not_before.timestamp()),
            not_after: unix_time(validity.not_after.timestamp()),
            common_name,
            dns_names,
        })
    }

    /// Why this certificate will not do for `hostname` at `now`, if it will not.
    fn renewal(&self, hostname: &str, now: UnixTime) -> Option<Renewal> {
        let days = self.not_after.0.saturating_sub(self.not_before.0) / DAY;
        let is_host = |name: &str| name.eq_ignore_ascii_case(hostname);
        if days > (BACKDATE + LIFETIME) / DAY {
            Some(Renewal::TooLong { days })
        } else if !self.common_name.as_deref().is_some_and(is_host)
            || !self.dns_names.iter().any(|name| is_host(name))
        {
            Some(Renewal::OtherHost {
                common_name: self.common_name.clone(),
            })
        } else if self.not_before > now {
            Some(Renewal::NotYetValid {
                not_before: self.not_before,
            })
        } else if self.not_after <= now {
            Some(Renewal::Expired {
                not_after: self.not_after,
            })
        } else if self.not_after.0 - now.0 <= RENEW_BEFORE {
            Some(Renewal::ExpiresSoon {
                not_after: self.not_after,
            })
        } else {
            None
        }
    }
}

/// Writes a certificate for `hostname` signed with `pair`, valid from a day before `now` for
/// `LIFETIME`, to `path`; returns its end.
fn issue(path: &Path, hostname: &str, pair: &KeyPair, now: UnixTime) -> Result<UnixTime, TlsError> {
    let not_before = UnixTime(now.0.saturating_sub(BACKDATE));
    let not_after = UnixTime(now.0 + LIFETIME);
    // The SAN is what clients check; the CN is what people (and testssl.sh) read.
    let mut params = CertificateParams::new(vec![hostname.to_owned()])?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, hostname);
    params.distinguished_name = subject;
    params.not_before = date(not_before)?;
    params.not_after = date(not_after)?;
    // rcgen's default serial is a hash of the public key, which a renewal keeps: two
    // certificates with one issuer and serial make some clients (NSS) refuse the second.
    params.serial_number = Some(serial()?);
    // What a CA would put in a server certificate with an ECDSA key.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(pair)?;
    write_replacing(path, cert.pem().as_bytes()).map_err(|e| file_err(path, e))?;
    Ok(not_after)
}

/// 16 random bytes, positive as RFC 5280 asks.
fn serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(rustls::Error::from)?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

fn date(t: UnixTime) -> Result<time::OffsetDateTime, TlsError> {
    i64::try_from(t.0)
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .ok_or(TlsError::Clock(t.0))
}

/// A certificate's time as `UnixTime`; before 1970 is 1970, which changes no decision here.
fn unix_time(secs: i64) -> UnixTime {
    UnixTime(u64::try_from(secs).unwrap_or(0))
}

fn file_err(file: &Path, e: io::Error) -> TlsError {
    TlsError::File {
        file: file.to_owned(),
        message: e.to_string(),
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only to a new file: a key left over from a start that did not finish
    // keeps its permissions when truncated, so set them before the new key goes in.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents)?;
    f.sync_all()
}

/// Replaces `path` by a file with `contents` in one rename, so that a crash leaves the old
/// certificate or the new one, never half of one.
fn write_replacing(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests;
