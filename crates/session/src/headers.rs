//! What the session reads in a received message's header section before it answers DATA:
//! the hop count (mail loops) and `Authentication-Results:` fields that claim to be ours.

/// The header section: up to the empty line that ends it, or the whole message when there is
/// none.
pub fn section(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => &message[..at + 2],
        None => message,
    }
}

/// The header fields of `header`, as (offset of the field's first byte, the whole field with
/// its folded lines).
fn fields(header: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= header.len() {
            return None;
        }
        let start = at;
        // A field runs on over lines that begin with a space or a tab (folding).
        loop {
            match header[at..].iter().position(|&b| b == b'\n') {
                Some(lf) => at += lf + 1,
                None => at = header.len(),
            }
            if !matches!(header.get(at), Some(b' ' | b'\t')) {
                break;
            }
        }
        Some((start, &header[start..at]))
    })
}

/// The field's name when it has one (`Name:` or `Name :`).
fn name(field: &[u8]) -> Option<&[u8]> {
    let colon = field.iter().position(|&b| b == b':')?;
    let name = field[..colon].trim_ascii_end();
    (!name.is_empty() && name.iter().all(|b| b.is_ascii_graphic())).then_some(name)
}

/// How many `Received:` fields the message carries: its hop count (RFC 5321 6.3).
pub fn hops(header: &[u8]) -> usize {
    fields(header)
        .filter(|(_, f)| name(f).is_some_and(|n| n.eq_ignore_ascii_case(b"Received")))
        .count()
}

/// The value of the first `Message-ID:` field, unfolded and trimmed, for log lines (lossy
/// UTF-8; the caller escapes it). At most 998 characters, as a line may hold.
pub fn message_id(header: &[u8]) -> Option<String> {
    let (_, field) = fields(header)
        .find(|(_, f)| name(f).is_some_and(|n| n.eq_ignore_ascii_case(b"Message-ID")))?;
    let colon = field.iter().position(|&b| b == b':')?;
    let value: Vec<u8> = field[colon + 1..]
        .iter()
        .copied()
        .filter(|b| !matches!(b, b'\r' | b'\n'))
        .take(998)
        .collect();
    let value = String::from_utf8_lossy(&value).trim().to_owned();
    (!value.is_empty()).then_some(value)
}

const AUTH_RESULTS: &[u8] = b"Authentication-Results";
/// Written over the name of a field that claims our authserv-id: as long as the original, so
/// the message is changed in place and nothing after it moves.
const OBSCURED: &[u8] = b"X-Removed-Auth-Results";

/// Renames every `Authentication-Results:` field whose authserv-id is `ours` (RFC 8601 5: a
/// field claiming to be from us that we did not write is forged, and downstream filters would
/// trust it). Returns how many were renamed.
pub fn obscure_forged_auth_results(header: &mut [u8], ours: &str) -> usize {
    const _: () = assert!(AUTH_RESULTS.len() == OBSCURED.len());
    let forged: Vec<usize> = fields(header)
        .filter(|(_, f)| {
            name(f).is_some_and(|n| n.eq_ignore_ascii_case(AUTH_RESULTS))
                && authserv_id(f).is_some_and(|id| id.eq_ignore_ascii_case(ours.as_bytes()))
        })
        .map(|(at, _)| at)
        .collect();
    for &at in &forged {
        header[at..at + OBSCURED.len()].copy_from_slice(OBSCURED);
    }
    forged.len()
}

/// The authserv-id of an `Authentication-Results:` field: the first word of its value, after
/// any comments and folding, up to `;`, whitespace or a comment.
fn authserv_id(field: &[u8]) -> Option<&[u8]> {
    let colon = field.iter().position(|&b| b == b':')?;
    let mut value = &field[colon + 1..];
    loop {
        value = value.trim_ascii_start();
        match value.first() {
            Some(b'(') => {
                // Skip a comment, nested ones included.
                let mut depth = 0usize;
                let mut end = value.len();
                for (i, &b) in value.iter().enumerate() {
                    match b {
                        b'(' => depth += 1,
                        b')' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                value = &value[end..];
            }
            Some(_) => break,
            None => return None,
        }
    }
    let end = value
        .iter()
        .position(|&b| b == b';' || b == b'(' || b.is_ascii_whitespace())
        .unwrap_or(value.len());
    (end > 0).then_some(&value[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_count_received_fields_folded_or_not() {
        let message = b"Received: from a\r\n\tby b; Mon\r\nreceived :x\r\nX-Received: no\r\nSubject: Received: no\r\n\r\nReceived: in the body\r\n";
        assert_eq!(hops(section(message)), 2);
        assert_eq!(hops(section(b"Subject: x\r\n\r\n")), 0);
        assert_eq!(hops(section(b"")), 0);
    }

    #[test]
    fn only_fields_claiming_our_id_are_obscured() {
        let mut message = b"Authentication-Results: mx.example.com; spf=pass\r\n\
authentication-results:\r\n (forged) MX.Example.COM;\r\n\tdkim=pass\r\n\
Authentication-Results: other.example; spf=fail\r\n\
Authentication-Results: mx.example.com.evil; spf=pass\r\n\
Subject: Authentication-Results: mx.example.com; x\r\n\r\n\
Authentication-Results: mx.example.com; in the body\r\n"
            .to_vec();
        let end = section(&message).len();
        let n = obscure_forged_auth_results(&mut message[..end], "mx.example.com");
        assert_eq!(n, 2);
        let text = String::from_utf8(message).unwrap();
        assert_eq!(
            text,
            "X-Removed-Auth-Results: mx.example.com; spf=pass\r\n\
X-Removed-Auth-Results:\r\n (forged) MX.Example.COM;\r\n\tdkim=pass\r\n\
Authentication-Results: other.example; spf=fail\r\n\
Authentication-Results: mx.example.com.evil; spf=pass\r\n\
Subject: Authentication-Results: mx.example.com; x\r\n\r\n\
Authentication-Results: mx.example.com; in the body\r\n"
        );
    }

    #[test]
    fn a_comment_before_the_id_is_skipped() {
        let field = b"Authentication-Results: (a (nested) comment) mx.test (x); none\r\n";
        assert_eq!(authserv_id(field), Some(&b"mx.test"[..]));
        assert_eq!(authserv_id(b"Authentication-Results:   \r\n"), None);
    }

    #[test]
    fn the_message_id_is_read_unfolded() {
        let header =
            b"Subject: x\r\nmessage-id:\r\n <abc@example.test>\r\nMessage-ID: <second@x>\r\n";
        assert_eq!(message_id(header).as_deref(), Some("<abc@example.test>"));
        assert_eq!(message_id(b"Subject: x\r\n"), None);
        assert_eq!(message_id(b"Message-ID:   \r\n"), None);
    }
}
