//! MAIL, RCPT and BDAT arguments as `crates/session/src/params.rs` reads them from the raw
//! command line: ORCPT, ENVID, SIZE and the BDAT chunk size.
//!
//! Input: one command line (UTF-8, as the session only reads UTF-8 lines).
//!
//! Checked, besides "no panic":
//! - an ORCPT that is taken encodes again to printable ASCII without spaces, and reads back
//!   the same (as a parameter and as stored);
//! - an ENVID that is taken is at most 100 octets of printable ASCII, and its xtext encoding
//!   has no CR, LF, NUL or space and decodes to it again;
//! - a number is taken only when it is all digits, and as the value those digits mean;
//! - a BDAT line that is taken says again what it was read as.

#![no_main]

use backstop_fuzz::check_orcpt;
use backstop_session::params::{self, Number};
use backstop_types::orcpt::{decode_xtext, encode_xtext};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(parameters) = params::parameters(line) {
        for (key, value) in parameters {
            assert!(!key.contains(|c: char| c.is_ascii_whitespace()), "{key:?}");
            if let Some(value) = value {
                check_number(value);
            }
        }
    }
    if let Ok(Some(orcpt)) = params::orcpt(line) {
        check_orcpt(&orcpt);
    }
    if let Ok(Some(envid)) = params::envid(line) {
        assert!(envid.len() <= 100, "{envid:?}");
        assert!(
            envid.bytes().all(|b| (0x20..0x7f).contains(&b)),
            "{envid:?}"
        );
        let encoded = encode_xtext(envid.as_bytes());
        assert!(
            encoded.bytes().all(|b| (0x21..0x7f).contains(&b)),
            "{encoded:?}"
        );
        assert_eq!(decode_xtext(&encoded).as_deref(), Ok(envid.as_bytes()));
    }
    if let Some(size) = params::value(line, "SIZE") {
        check_number(size);
    }
    if let Some((size, last)) = params::bdat(line) {
        let again = format!("BDAT {size}{}\r\n", if last { " LAST" } else { "" });
        assert_eq!(params::bdat(&again), Some((size, last)));
    }
});

fn check_number(text: &str) {
    match params::number(text) {
        Number::Value(n) => {
            assert!(text.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(text.trim_start_matches('0').len(), {
                let digits = n.to_string();
                if n == 0 {
                    0
                } else {
                    digits.len()
                }
            });
            assert_eq!(text.parse::<u64>(), Ok(n));
        }
        Number::TooLarge => {
            assert!(text.bytes().all(|b| b.is_ascii_digit()));
            assert!(text.trim_start_matches('0').len() >= 20, "{text:?}");
        }
        Number::Invalid => {
            assert!(text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
