//! MAIL, RCPT and BDAT arguments read from the raw command line, where smtp-proto's parser
//! must not be trusted: it hands over ORCPT and ENVID already xtext-decoded (so a `+0D+0A`
//! arrives as a real CR LF, and the ORCPT's address type is gone), decodes `+HH` above 0x7F as
//! Latin-1, and its numbers wrap (`BDAT 184467440737095516160 LAST` reads as 0). smtp-proto
//! still decides the command's shape; the values that travel on — to a next hop, into a report
//! or into the queue — are taken from here.

use backstop_types::orcpt::decode_xtext;
use backstop_types::{Orcpt, OrcptError};

/// The parameters after the path of a MAIL or RCPT line (`<...>`, which may hold a quoted
/// `>`), as `KEY=VALUE` words; `None` when there is no path.
pub fn parameters(line: &str) -> Option<impl Iterator<Item = (&str, Option<&str>)>> {
    let start = line.find('<')?;
    let mut quoted = false;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in line[start..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                end = Some(start + i + 1);
                break;
            }
            _ => {}
        }
    }
    let rest = &line[end?..];
    Some(
        rest.split_ascii_whitespace()
            .map(|word| match word.split_once('=') {
                Some((key, value)) => (key, Some(value)),
                None => (word, None),
            }),
    )
}

/// The value of parameter `key` (case-insensitive), if given.
pub fn value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    parameters(line)?
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .and_then(|(_, v)| v)
}

/// A number where SMTP wants one: digits only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Number {
    Value(u64),
    /// Only digits, but more than a `u64` holds: as good as infinite.
    TooLarge,
    /// Not a number at all.
    Invalid,
}

pub fn number(text: &str) -> Number {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Number::Invalid;
    }
    match text.parse::<u64>() {
        Ok(n) => Number::Value(n),
        Err(_) => Number::TooLarge,
    }
}

/// `BDAT chunk-size [LAST]`: the size and whether it is the last chunk; `None` when the line
/// is not that (RFC 3030 2: the size is 1*DIGIT, and must fit).
pub fn bdat(line: &str) -> Option<(u64, bool)> {
    let mut words = line.trim_end_matches(['\r', '\n']).split_ascii_whitespace();
    let _verb = words.next()?;
    let Number::Value(size) = number(words.next()?) else {
        return None;
    };
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return None,
    };
    words.next().is_none().then_some((size, last))
}

/// The ORCPT parameter of a RCPT line, checked ([`Orcpt::parse_param`]).
pub fn orcpt(line: &str) -> Result<Option<Orcpt>, OrcptError> {
    value(line, "ORCPT").map(Orcpt::parse_param).transpose()
}

/// Why an ENVID is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadEnvid;

/// The ENVID parameter of a MAIL line, decoded: at most 100 octets of xtext that decode to
/// printable ASCII (RFC 3461 4.4).
pub fn envid(line: &str) -> Result<Option<String>, BadEnvid> {
    let Some(encoded) = value(line, "ENVID") else {
        return Ok(None);
    };
    if encoded.is_empty() || encoded.len() > 100 {
        return Err(BadEnvid);
    }
    let decoded = decode_xtext(encoded).map_err(|_| BadEnvid)?;
    if !decoded.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(BadEnvid);
    }
    // Printable ASCII is UTF-8.
    String::from_utf8(decoded).map(Some).map_err(|_| BadEnvid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_follow_the_path_even_a_quoted_one() {
        let line = "MAIL FROM:<\"a> b\"@x.test> SIZE=12 BODY=8BITMIME SMTPUTF8\r\n";
        let params: Vec<_> = parameters(line).unwrap().collect();
        assert_eq!(
            params,
            [
                ("SIZE", Some("12")),
                ("BODY", Some("8BITMIME")),
                ("SMTPUTF8", None)
            ]
        );
        assert_eq!(value(line, "size"), Some("12"));
        assert_eq!(value(line, "ENVID"), None);
        assert!(parameters("MAIL FROM:x@y").is_none());
    }

    #[test]
    fn numbers_never_wrap() {
        assert_eq!(number("0"), Number::Value(0));
        assert_eq!(number("18446744073709551615"), Number::Value(u64::MAX));
        assert_eq!(number("184467440737095516160"), Number::TooLarge);
        assert_eq!(number("99999999999999999999999999999"), Number::TooLarge);
        for bad in ["", "-1", "+1", "1e3", "12 ", "0x10"] {
            assert_eq!(number(bad), Number::Invalid, "{bad:?}");
        }
        assert_eq!(bdat("BDAT 100 LAST\r\n"), Some((100, true)));
        assert_eq!(bdat("bdat 7\r\n"), Some((7, false)));
        assert_eq!(bdat("BDAT 184467440737095516160 LAST\r\n"), None);
        assert_eq!(bdat("BDAT 10 LAST now\r\n"), None);
        assert_eq!(bdat("BDAT LAST\r\n"), None);
    }

    #[test]
    fn orcpt_is_taken_from_the_raw_line() {
        let line = "RCPT TO:<bob@internal.test> ORCPT=rfc822;rfc822+0D+0ARSET+0D+0AMAIL+20FROM:<ceo@bank.test>+0D+0ANOOP;x\r\n";
        assert_eq!(orcpt(line), Err(OrcptError::Control));
        let line = "RCPT TO:<bob@x.test> NOTIFY=FAILURE ORCPT=rfc822;Bob+2Bold@X.test\r\n";
        let o = orcpt(line).unwrap().unwrap();
        assert_eq!((o.addr_type(), o.address()), ("rfc822", "Bob+old@X.test"));
        assert_eq!(orcpt("RCPT TO:<bob@x.test>\r\n"), Ok(None));
    }

    #[test]
    fn envid_is_printable_ascii() {
        assert_eq!(
            envid("MAIL FROM:<a@b> ENVID=QQ314159+2B1\r\n"),
            Ok(Some("QQ314159+1".into()))
        );
        assert_eq!(
            envid("MAIL FROM:<a@b> ENVID=x+0D+0AQUIT\r\n"),
            Err(BadEnvid)
        );
        assert_eq!(envid("MAIL FROM:<a@b> ENVID=+C3+A4\r\n"), Err(BadEnvid));
        let long = format!("MAIL FROM:<a@b> ENVID={}\r\n", "a".repeat(101));
        assert_eq!(envid(&long), Err(BadEnvid));
        assert_eq!(envid("MAIL FROM:<a@b>\r\n"), Ok(None));
    }
}
