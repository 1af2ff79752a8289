//! Percent-encoding (RFC 3986) and `application/x-www-form-urlencoded` pairs.

/// `s` with every octet other than the unreserved characters (`A-Z a-z 0-9 - . _ ~`) as
/// `%XX`: safe as one path segment or one query value.
pub fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

/// `input` with its `%XX` escapes decoded, and `+` as a space when `plus_is_space`; `None`
/// when an escape is not `%` and two hex digits.
pub(crate) fn percent_decode(input: &[u8], plus_is_space: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        match b {
            b'%' => {
                let hi = hex_value(*input.get(i + 1)?)?;
                let lo = hex_value(*input.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// The name-value pairs of a query string or a form body (`a=1&b=x+y`), decoded. Empty
/// pairs are skipped; a pair with a bad escape or a part that is not UTF-8 is dropped.
pub(crate) fn decode_pairs(input: &[u8]) -> Vec<(String, String)> {
    input
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, &[][..]),
            };
            let name = String::from_utf8(percent_decode(name, true)?).ok()?;
            let value = String::from_utf8(percent_decode(value, true)?).ok()?;
            Some((name, value))
        })
        .collect()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
