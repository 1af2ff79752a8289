//! Bounce provenance, for domains without BATV: a bounce (null sender) must answer a message we
//! really sent. The original it returns (a `message/rfc822` or `text/rfc822-headers` part, as
//! RFC 3464 reports carry) names its Message-ID; if backstop never sent a message with that id
//! (the queue's sent-Message-ID index), the bounce is backscatter and is refused.

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// The Message-ID of the original message a report returns, if it returns one.
pub fn returned_message_id(message: &[u8]) -> Option<String> {
    let parsed = MessageParser::default().parse(message)?;
    for part in &parsed.parts {
        let id = match &part.body {
            PartType::Message(original) => original.message_id().map(str::to_owned),
            PartType::Text(text)
                if part.content_type().is_some_and(|ct| {
                    ct.ctype().eq_ignore_ascii_case("text")
                        && ct
                            .subtype()
                            .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers"))
                }) =>
            {
                MessageParser::default()
                    .parse_headers(text.as_bytes())
                    .and_then(|h| h.message_id().map(str::to_owned))
            }
            _ => None,
        };
        if id.is_some() {
            return id;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_returned_original_in_either_form() {
        let full = b"From: MAILER-DAEMON@mx.example.org\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nsorry\r\n\
--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n\
--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: a@example.test\r\nMessage-ID: <ours@example.test>\r\n\r\nhi\r\n\
--b--\r\n";
        assert_eq!(
            returned_message_id(full).as_deref(),
            Some("ours@example.test")
        );
        let headers = b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nsorry\r\n\
--b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: a@example.test\r\nMessage-ID: <hdrs@example.test>\r\n\r\n\
--b--\r\n";
        assert_eq!(
            returned_message_id(headers).as_deref(),
            Some("hdrs@example.test")
        );
        assert_eq!(
            returned_message_id(b"Subject: plain\r\n\r\nno original\r\n"),
            None
        );
    }

    /// Found by the provenance fuzz target: a returned message that is itself an empty
    /// `message/rfc822` reached mail-parser's `debug_assert!(false, "Invalid part ID, ...")`,
    /// so in a build with debug assertions any bounce like it panicked (the workspace's dev
    /// profile now builds mail-parser as release does). It returns no Message-ID.
    #[test]
    fn a_returned_message_nested_empty_is_no_panic() {
        let bounce = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: message/rfc822\r\n\r\n\
Content-Type: message/rfc822\r\n\r\n\r\n\
--b--";
        assert_eq!(returned_message_id(bounce), None);
    }
}
