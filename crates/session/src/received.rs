//! The `Received:` trace header stamped on every accepted message (RFC 5321 4.4).

use backstop_types::{ClientInfo, Recipient, UnixTime};

/// The header, folded, CRLF-terminated. `with` is the RFC 3848 / RFC 6531 protocol name.
pub fn header(
    hostname: &str,
    client: &ClientInfo,
    esmtp: bool,
    smtputf8: bool,
    recipients: &[Recipient],
    now: UnixTime,
) -> Vec<u8> {
    let ptr = client.ptr.as_ref().map_or("unknown", |d| d.as_str());
    let mut h = format!(
        "Received: from {} ({ptr} [{}])\r\n",
        sanitize(&client.helo),
        client.ip
    );
    if let Some(tls) = &client.tls {
        h.push_str(&format!(
            "\t(using {} with cipher {})\r\n",
            tls.version, tls.cipher
        ));
    }
    if let Some(auth) = &client.auth {
        h.push_str(&format!(
            "\t(Authenticated sender: {})\r\n",
            sanitize(&auth.user)
        ));
    }
    let protocol = match (smtputf8, esmtp) {
        (true, _) => "UTF8SMTP",
        (false, true) => "ESMTP",
        (false, false) => "SMTP",
    };
    let suffix = match (client.tls.is_some(), client.auth.is_some()) {
        (true, true) => "SA",
        (true, false) => "S",
        (false, true) => "A",
        (false, false) => "",
    };
    // RFC 3848 defines the suffixes for ESMTP; plain SMTP has none of its own.
    let protocol = if protocol == "SMTP" && !suffix.is_empty() {
        format!("ESMTP{suffix}")
    } else {
        format!("{protocol}{suffix}")
    };
    h.push_str(&format!("\tby {hostname} (backstop) with {protocol}"));
    // Name the recipient only when there is one, so a message's other recipients stay private.
    if let [only] = recipients {
        h.push_str(&format!("\r\n\tfor <{}>", only.address));
    }
    h.push_str(&format!("; {}\r\n", now.to_rfc5322()));
    h.into_bytes()
}

/// Client-supplied text in a header: no CR, LF or other controls, no unbalanced comment.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || c == '(' || c == ')' {
                '_'
            } else {
                c
            }
        })
        .collect()
}
