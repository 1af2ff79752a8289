//! ORCPT (RFC 3461 4.2): the original recipient address a client gave with RCPT, kept with the
//! recipient, passed on to a next hop that takes DSN parameters and shown in reports.
//!
//! The parameter is parsed from the raw command line into its two parts, the address type and
//! the address, and both are checked before anything is stored: the type must be an atom, the
//! address (xtext decoded) must be UTF-8 without control characters. On the way out the type is
//! written as checked and the address encoded again, so a decoded CR LF can never become a
//! command line of its own at the next hop.

use std::fmt;

use crate::text::has_control;

/// An original recipient: `addr-type;address` with the address decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Orcpt {
    /// The address type, lower-case: `rfc822`, or `utf-8` (RFC 6533).
    addr_type: String,
    address: String,
}

/// Why an ORCPT parameter is refused (`501 5.5.4`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrcptError {
    #[error("ORCPT needs the form addr-type;address")]
    NoSemicolon,
    #[error("the ORCPT address type is not an atom")]
    BadType,
    #[error("the ORCPT address is empty or longer than 500 octets")]
    BadLength,
    #[error("the ORCPT address is not valid xtext")]
    BadXtext,
    #[error("the ORCPT address is not UTF-8")]
    NotUtf8,
    #[error("the ORCPT address contains a control character")]
    Control,
}

/// The longest address kept (RFC 3461 4.2 allows 500 characters in the encoded parameter).
const MAX_ADDRESS: usize = 500;

impl Orcpt {
    /// An original recipient from its type and its decoded address.
    pub fn new(addr_type: &str, address: &str) -> Result<Orcpt, OrcptError> {
        if addr_type.is_empty() || addr_type.len() > 32 || !addr_type.chars().all(is_atext) {
            return Err(OrcptError::BadType);
        }
        if address.is_empty() || address.len() > MAX_ADDRESS {
            return Err(OrcptError::BadLength);
        }
        if has_control(address) {
            return Err(OrcptError::Control);
        }
        Ok(Orcpt {
            addr_type: addr_type.to_ascii_lowercase(),
            address: address.to_owned(),
        })
    }

    /// The parameter's value as sent, `addr-type;encoded-address`: xtext for every type but
    /// `utf-8`, whose address is utf-8-addr-xtext or utf-8-addr-unitext (RFC 6533 3).
    pub fn parse_param(value: &str) -> Result<Orcpt, OrcptError> {
        let (addr_type, encoded) = value.split_once(';').ok_or(OrcptError::NoSemicolon)?;
        if encoded.is_empty() || encoded.len() > MAX_ADDRESS * 4 {
            return Err(OrcptError::BadLength);
        }
        let address = if addr_type.eq_ignore_ascii_case("utf-8") {
            decode_utf8_addr(encoded)?
        } else {
            let bytes = decode_xtext(encoded)?;
            String::from_utf8(bytes).map_err(|_| OrcptError::NotUtf8)?
        };
        Orcpt::new(addr_type, &address)
    }

    /// An original recipient as stored: `addr-type;address`, the address decoded. A value
    /// without a type (written by earlier versions, which kept only the address) is `rfc822`.
    pub fn from_stored(value: &str) -> Result<Orcpt, OrcptError> {
        match value.split_once(';') {
            Some((t, a)) if !t.is_empty() && t.chars().all(is_atext) => Orcpt::new(t, a),
            _ => Orcpt::new("rfc822", value),
        }
    }

    /// For `rfc822;alias@example.com` when an alias expanded the address the client gave.
    pub fn rfc822(address: &crate::Address) -> Orcpt {
        let address = address.to_string();
        let addr_type = if address.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        Orcpt {
            addr_type: addr_type.into(),
            address,
        }
    }

    pub fn addr_type(&self) -> &str {
        &self.addr_type
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// The stored form, `addr-type;address` (decoded), which [`Orcpt::from_stored`] reads.
    pub fn to_stored(&self) -> String {
        format!("{};{}", self.addr_type, self.address)
    }

    /// The parameter's value for `RCPT TO:<...> ORCPT=`: printable ASCII only.
    pub fn to_param(&self) -> String {
        let encoded = if self.addr_type == "utf-8" {
            encode_utf8_addr_xtext(&self.address)
        } else {
            encode_xtext(self.address.as_bytes())
        };
        format!("{};{encoded}", self.addr_type)
    }
}

impl fmt::Display for Orcpt {
    /// `addr-type; address`, as the `Original-Recipient:` field of a report shows it
    /// (RFC 3464 2.3.1). One line: the address holds no control character.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.addr_type, self.address)
    }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// RFC 3461 xtext: printable ASCII except `+` and `=` as is, anything else as `+HH`.
pub fn encode_xtext(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Decodes RFC 3461 xtext: `+HH` with two upper-case hex digits, other octets printable
/// ASCII other than `=`.
pub fn decode_xtext(text: &str) -> Result<Vec<u8>, OrcptError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(OrcptError::BadXtext)?;
                let hex = std::str::from_utf8(hex).map_err(|_| OrcptError::BadXtext)?;
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return Err(OrcptError::BadXtext);
                }
                out.push(u8::from_str_radix(hex, 16).map_err(|_| OrcptError::BadXtext)?);
                i += 3;
            }
            b @ 33..=126 if b != b'=' => {
                out.push(b);
                i += 1;
            }
            _ => return Err(OrcptError::BadXtext),
        }
    }
    Ok(out)
}

/// Decodes utf-8-addr-xtext and utf-8-addr-unitext (RFC 6533 3): `\x{HEX}` escapes, raw
/// UTF-8 beyond ASCII, printable ASCII other than `+`, `=` and `\`.
fn decode_utf8_addr(text: &str) -> Result<String, OrcptError> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if chars.next() != Some('x') || chars.next() != Some('{') {
                    return Err(OrcptError::BadXtext);
                }
                let hex: String = chars.by_ref().take_while(|&h| h != '}').collect();
                if hex.is_empty() || hex.len() > 6 || !hex.chars().all(|h| h.is_ascii_hexdigit()) {
                    return Err(OrcptError::BadXtext);
                }
                let code = u32::from_str_radix(&hex, 16).map_err(|_| OrcptError::BadXtext)?;
                out.push(char::from_u32(code).ok_or(OrcptError::BadXtext)?);
            }
            '+' | '=' => return Err(OrcptError::BadXtext),
            c if c.is_ascii() && !c.is_ascii_graphic() => return Err(OrcptError::BadXtext),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// utf-8-addr-xtext: printable ASCII as is except `+`, `=` and `\`, which, like every other
/// character, are written `\x{HEX}`.
fn encode_utf8_addr_xtext(address: &str) -> String {
    let mut out = String::with_capacity(address.len());
    for c in address.chars() {
        if c.is_ascii_graphic() && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_well_formed_orcpt_is_kept_and_encoded_again() {
        let o = Orcpt::parse_param("rfc822;George+20@Tax-+20ME+20.GOV").unwrap();
        assert_eq!(
            (o.addr_type(), o.address()),
            ("rfc822", "George @Tax- ME .GOV")
        );
        assert_eq!(o.to_param(), "rfc822;George+20@Tax-+20ME+20.GOV");
        assert_eq!(o.to_string(), "rfc822; George @Tax- ME .GOV");
        assert_eq!(Orcpt::from_stored(&o.to_stored()), Ok(o));
        let o = Orcpt::parse_param("RFC822;bob+2Bx@example.com").unwrap();
        assert_eq!(o.to_param(), "rfc822;bob+2Bx@example.com");
    }

    #[test]
    fn utf8_addresses_use_rfc6533() {
        let o = Orcpt::parse_param("utf-8;j\\x{F6}rg@b\u{fc}cher.test").unwrap();
        assert_eq!(o.address(), "jörg@bücher.test");
        assert_eq!(o.to_param(), "utf-8;j\\x{F6}rg@b\\x{FC}cher.test");
        assert_eq!(Orcpt::parse_param(&o.to_param()), Ok(o));
    }

    #[test]
    fn injection_and_garbage_are_refused() {
        // The attack: CR LF decoded out of xtext, and a type that is no atom.
        let payload = "rfc822;a+0D+0ARSET+0D+0AMAIL+20FROM:<ceo@bank.test>";
        assert_eq!(Orcpt::parse_param(payload), Err(OrcptError::Control));
        assert_eq!(
            Orcpt::parse_param("rfc822\r\nRSET;a@b"),
            Err(OrcptError::BadType)
        );
        assert_eq!(Orcpt::parse_param("a@b"), Err(OrcptError::NoSemicolon));
        assert_eq!(Orcpt::parse_param("rfc822;"), Err(OrcptError::BadLength));
        assert_eq!(Orcpt::parse_param("rfc822;a+0"), Err(OrcptError::BadXtext));
        assert_eq!(Orcpt::parse_param("rfc822;a+zz"), Err(OrcptError::BadXtext));
        assert_eq!(Orcpt::parse_param("rfc822;a=b"), Err(OrcptError::BadXtext));
        assert_eq!(
            Orcpt::parse_param("rfc822;+FF+FE"),
            Err(OrcptError::NotUtf8)
        );
        assert_eq!(Orcpt::parse_param("rfc822;a+00b"), Err(OrcptError::Control));
        assert_eq!(
            Orcpt::parse_param("utf-8;a\\x{D}\\x{A}RSET"),
            Err(OrcptError::Control)
        );
        assert_eq!(
            Orcpt::parse_param("utf-8;a\\x{110000}"),
            Err(OrcptError::BadXtext)
        );
        let long = format!("rfc822;{}@b", "a".repeat(600));
        assert_eq!(Orcpt::parse_param(&long), Err(OrcptError::BadLength));
    }

    #[test]
    fn stored_values_of_earlier_versions_are_read() {
        // Earlier versions stored the decoded address alone, or `rfc822;` and the address.
        let o = Orcpt::from_stored("Bob@Example.COM").unwrap();
        assert_eq!((o.addr_type(), o.address()), ("rfc822", "Bob@Example.COM"));
        let o = Orcpt::from_stored("rfc822;bob@example.com").unwrap();
        assert_eq!(o.address(), "bob@example.com");
        // What an injection left in a record of an earlier version is not taken.
        assert!(Orcpt::from_stored("x\r\nRSET\r\n").is_err());
    }
}
