//! Built-in content rules: regular expressions on header fields and on the text of the body,
//! attachments by file name extension and by MIME type (declared, or recognised from the
//! first bytes of the content), and the nesting depth of MIME parts. Messages are read with
//! mail-parser: header values and text parts are matched decoded (RFC 2047 words, quoted-
//! printable, base64, charsets).

use mail_parser::{Message, MessageParser, MessagePart, MimeHeaders, PartType};
use regex::Regex;

use crate::pipeline::Step;
use backstop_types::Reply;

/// What a rule looks at.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// The value of each header field called `name` (any field when `None`; then the
    /// pattern sees `Name: value`).
    Header {
        name: Option<String>,
        pattern: Regex,
    },
    /// The decoded text of each text part (plain and HTML).
    Body { pattern: Regex },
    /// A part whose file name ends in one of `extensions` (lower case, without the dot), or
    /// whose declared or recognised MIME type is one of `mime_types` (`type/subtype`).
    Attachment {
        extensions: Vec<String>,
        mime_types: Vec<String>,
    },
    /// MIME containers (multipart or message/rfc822) nested deeper than `max`.
    MimeDepth { max: usize },
}

/// What a rule does to a message it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `550 5.7.1` with this text.
    Reject(String),
    /// `451 4.7.1` with this text.
    Tempfail(String),
    Quarantine,
    /// Accepted and dropped: only for rules an administrator is certain of; always logged.
    Discard,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub matcher: Matcher,
    pub action: Action,
}

impl Rule {
    /// The rule's verdict on `message`: continue, or its action with what matched.
    pub fn check(&self, message: &[u8]) -> Step {
        let Some(parsed) = MessageParser::default().parse(message) else {
            return Step::Continue(Vec::new());
        };
        let Some(found) = self.find(&parsed) else {
            return Step::Continue(Vec::new());
        };
        match &self.action {
            Action::Reject(text) => Step::Refuse(Reply::content_rejected(text)),
            Action::Tempfail(text) => Step::Refuse(Reply::content_deferred(text)),
            Action::Quarantine => Step::Quarantine(found),
            Action::Discard => Step::Discard(found),
        }
    }

    /// What matched, for the log and the quarantine reason.
    fn find(&self, message: &Message<'_>) -> Option<String> {
        match &self.matcher {
            Matcher::Header { name, pattern } => {
                message.root_part().headers.iter().find_map(|header| {
                    let value = header
                        .value()
                        .as_text()
                        .map(str::to_owned)
                        .unwrap_or_else(|| raw_value(message, header));
                    let subject = match name {
                        Some(name) if header.name().eq_ignore_ascii_case(name) => value,
                        Some(_) => return None,
                        None => format!("{}: {value}", header.name()),
                    };
                    pattern
                        .is_match(&subject)
                        .then(|| format!("header {} matches {}", header.name(), pattern.as_str()))
                })
            }
            Matcher::Body { pattern } => every_part(message).into_iter().find_map(|part| {
                let text = match &part.body {
                    PartType::Text(text) | PartType::Html(text) => text,
                    _ => return None,
                };
                pattern
                    .is_match(text)
                    .then(|| format!("body matches {}", pattern.as_str()))
            }),
            Matcher::Attachment {
                extensions,
                mime_types,
            } => every_part(message).into_iter().find_map(|part| {
                if let Some(name) = part.attachment_name() {
                    let extension = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
                    if extension.is_some_and(|e| extensions.contains(&e)) {
                        return Some(format!("attachment {name:?}"));
                    }
                }
                let declared = part.content_type().map(|t| {
                    format!("{}/{}", t.ctype(), t.subtype().unwrap_or("")).to_ascii_lowercase()
                });
                let recognised = recognise(part.contents()).map(str::to_owned);
                let found = [declared, recognised]
                    .into_iter()
                    .flatten()
                    .find(|t| mime_types.contains(t))?;
                Some(format!(
                    "attachment {:?} of type {found}",
                    part.attachment_name().unwrap_or("(no name)")
                ))
            }),
            Matcher::MimeDepth { max } => {
                let depth = depth(message, message.root_part(), 0);
                (depth > *max).then(|| format!("MIME parts nested {depth} deep (at most {max})"))
            }
        }
    }
}

/// The header field's value as received, unfolded.
fn raw_value(message: &Message<'_>, header: &mail_parser::Header<'_>) -> String {
    let raw = message
        .raw_message()
        .get(header.offset_start as usize..header.offset_end as usize)
        .unwrap_or_default();
    String::from_utf8_lossy(raw)
        .replace("\r\n", "")
        .replace('\n', "")
        .trim()
        .to_owned()
}

/// Every part of the message, and of the messages it carries.
fn every_part<'a>(message: &'a Message<'a>) -> Vec<&'a MessagePart<'a>> {
    let mut parts = Vec::new();
    for part in &message.parts {
        parts.push(part);
        if let PartType::Message(inner) = &part.body {
            parts.extend(every_part(inner));
        }
    }
    parts
}

/// The deepest nesting of MIME containers under `part`.
fn depth(message: &Message<'_>, part: &MessagePart<'_>, seen: usize) -> usize {
    // A malformed message cannot make this recurse for ever: mail-parser's tree is finite,
    // and the walk stops at a depth no message needs.
    if seen > 1000 {
        return seen;
    }
    match &part.body {
        PartType::Multipart(children) => children
            .iter()
            .filter_map(|id| message.part(*id))
            .map(|child| depth(message, child, seen + 1))
            .max()
            .unwrap_or(seen + 1),
        PartType::Message(inner) => depth(inner, inner.root_part(), seen + 1),
        _ => seen,
    }
}

/// The MIME type the content's first bytes show, for the formats that hide behind harmless
/// names (as `file` names them).
fn recognise(content: &[u8]) -> Option<&'static str> {
    const MAGIC: [(&[u8], &str); 6] = [
        (b"MZ", "application/x-dosexec"),
        (b"\x7fELF", "application/x-executable"),
        (b"PK\x03\x04", "application/zip"),
        (b"Rar!\x1a\x07", "application/x-rar"),
        (b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
        (b"%PDF-", "application/pdf"),
    ];
    MAGIC
        .iter()
        .find(|(magic, _)| content.starts_with(magic))
        .map(|(_, name)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(matcher: Matcher) -> Rule {
        Rule {
            matcher,
            action: Action::Quarantine,
        }
    }

    fn verdict(rule: &Rule, message: &str) -> Option<String> {
        match rule.check(message.replace('\n', "\r\n").as_bytes()) {
            Step::Continue(_) => None,
            Step::Quarantine(why) => Some(why),
            other => panic!("{other:?}"),
        }
    }

    const MIXED: &str = "From: a@example.org\nSubject: =?UTF-8?B?VmnDoGdyYQ==?=\n\
        MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n\
        --b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n\
        Buy che=\nap pills\n\
        --b1\nContent-Type: application/pdf; name=\"invoice.pdf\"\n\
        Content-Disposition: attachment; filename=\"invoice.pdf\"\nContent-Transfer-Encoding: base64\n\n\
        TVqQAAMAAAAEAAAA\n\
        --b1--\n";

    #[test]
    fn header_patterns_see_decoded_values() {
        let subject = rule(Matcher::Header {
            name: Some("subject".into()),
            pattern: Regex::new("(?i)viàgra").unwrap(),
        });
        assert_eq!(
            verdict(&subject, MIXED).as_deref(),
            Some("header Subject matches (?i)viàgra")
        );
        let any = rule(Matcher::Header {
            name: None,
            pattern: Regex::new("^From: .*@example\\.org").unwrap(),
        });
        assert!(verdict(&any, MIXED).is_some());
        let other = rule(Matcher::Header {
            name: Some("To".into()),
            pattern: Regex::new(".").unwrap(),
        });
        assert_eq!(verdict(&other, MIXED), None);
    }

    #[test]
    fn body_patterns_see_decoded_text() {
        let body = rule(Matcher::Body {
            pattern: Regex::new("cheap pills").unwrap(),
        });
        assert!(verdict(&body, MIXED).is_some());
    }

    #[test]
    fn attachments_by_name_and_by_content() {
        let by_name = rule(Matcher::Attachment {
            extensions: vec!["pdf".into()],
            mime_types: vec![],
        });
        assert_eq!(
            verdict(&by_name, MIXED).as_deref(),
            Some("attachment \"invoice.pdf\"")
        );
        // Called a PDF, but it is a Windows program.
        let by_content = rule(Matcher::Attachment {
            extensions: vec!["exe".into()],
            mime_types: vec!["application/x-dosexec".into()],
        });
        assert_eq!(
            verdict(&by_content, MIXED).as_deref(),
            Some("attachment \"invoice.pdf\" of type application/x-dosexec")
        );
        let harmless = rule(Matcher::Attachment {
            extensions: vec!["exe".into()],
            mime_types: vec!["application/zip".into()],
        });
        assert_eq!(verdict(&harmless, MIXED), None);
    }

    #[test]
    fn nesting_depth_counts_multiparts_and_messages() {
        let mut nested = String::from("From: a@example.org\nContent-Type: text/plain\n\nbottom\n");
        for level in 0..4 {
            nested = format!(
                "From: a@example.org\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"l{level}\"\n\n\
                 --l{level}\nContent-Type: message/rfc822\n\n{nested}\n--l{level}--\n"
            );
        }
        // Four multiparts, each holding a message: eight containers deep.
        let at_most = |max| verdict(&rule(Matcher::MimeDepth { max }), &nested);
        assert_eq!(at_most(8), None);
        assert_eq!(
            at_most(7).as_deref(),
            Some("MIME parts nested 8 deep (at most 7)")
        );
        assert_eq!(
            verdict(
                &rule(Matcher::MimeDepth { max: 0 }),
                "Subject: x\n\nplain\n"
            ),
            None
        );
    }
}
