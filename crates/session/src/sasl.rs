//! AUTH PLAIN (RFC 4616) and LOGIN: turning base64 lines into credentials.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// The SASL mechanisms backstop offers. Both send the password itself, which is why AUTH is
/// offered only under TLS unless a listener is explicitly configured otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

/// Why a SASL response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 4).
    Cancelled,
    /// Not base64, not UTF-8, or not the shape the mechanism needs.
    Malformed,
    /// PLAIN with an authorization identity other than the user: proxy login is not supported.
    ProxyRefused,
}

/// Decodes one client response line (without CRLF).
pub fn decode_line(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_ascii();
    if line == b"*" {
        return Err(SaslError::Cancelled);
    }
    if line == b"=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| SaslError::Malformed)
}

/// Splits a decoded PLAIN message `authzid NUL authcid NUL passwd` into user and password.
pub fn parse_plain(message: &[u8]) -> Result<(String, String), SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| SaslError::Malformed);
    let (authzid, user, password) = (text(authzid)?, name(authcid)?, text(password)?);
    if !authzid.is_empty() && authzid != user {
        return Err(SaslError::ProxyRefused);
    }
    Ok((user, password))
}

/// A decoded LOGIN password as text.
pub fn parse_login_field(message: Vec<u8>) -> Result<String, SaslError> {
    String::from_utf8(message).map_err(|_| SaslError::Malformed)
}

/// A decoded user name: UTF-8, not empty, without control characters. A name is logged,
/// written into `Received:` and looked up in directories; no store has a user without a name
/// or whose name holds a line break, so such a name is malformed, not merely unknown (for
/// PLAIN and LOGIN alike: no password check is spent on it).
pub fn name(message: &[u8]) -> Result<String, SaslError> {
    let name = std::str::from_utf8(message).map_err(|_| SaslError::Malformed)?;
    if name.is_empty() || backstop_types::text::has_control(name) {
        return Err(SaslError::Malformed);
    }
    Ok(name.to_owned())
}

/// The LOGIN challenges, base64 of `Username:` and `Password:`.
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain() {
        assert_eq!(
            parse_plain(b"\0alice\0s3cret"),
            Ok(("alice".into(), "s3cret".into()))
        );
        assert_eq!(
            parse_plain(b"alice\0alice\0pw"),
            Ok(("alice".into(), "pw".into()))
        );
        assert_eq!(parse_plain(b"bob\0alice\0pw"), Err(SaslError::ProxyRefused));
        assert_eq!(parse_plain(b"alice\0pw"), Err(SaslError::Malformed));
        assert_eq!(parse_plain(b"\0\0pw"), Err(SaslError::Malformed));
        // A line break in the name would forge a log line.
        assert_eq!(
            parse_plain(b"\0x\r\noutcome=Success\0pw"),
            Err(SaslError::Malformed)
        );
    }

    /// Found by the session fuzz target: AUTH LOGIN took an empty line (`=`, or nothing) as
    /// the user name and asked the user store about it, where PLAIN refuses an empty name.
    #[test]
    fn a_login_user_name_is_checked_as_plain_checks_it() {
        assert_eq!(name(b"alice"), Ok("alice".into()));
        assert_eq!(name(b""), Err(SaslError::Malformed));
        assert_eq!(name(b"x\r\noutcome=Success"), Err(SaslError::Malformed));
        assert_eq!(name(b"\xff"), Err(SaslError::Malformed));
    }

    #[test]
    fn lines() {
        assert_eq!(decode_line(b"*"), Err(SaslError::Cancelled));
        assert_eq!(decode_line(b"="), Ok(vec![]));
        assert_eq!(decode_line(b"YWxpY2U="), Ok(b"alice".to_vec()));
        assert_eq!(decode_line(b"not base64!"), Err(SaslError::Malformed));
    }
}
