//! Text that came from outside, on its way into another protocol, a header field or a log line.
//!
//! Two tools, one rule: untrusted bytes never change the structure of what they are written
//! into. [`Escaped`] shows a client-supplied string in a log line with every control character
//! visible as an escape, so a newline in a user name cannot forge a second line.
//! [`one_line`] is the guard below protocol and header writers: a value holding CR, LF or NUL
//! is refused, never sent (an SMTP command line, a milter string, an HTTP header, a generated
//! header field), so a value can never end a line and start a command of its own.

use std::fmt;

/// A string shown with control characters (and other invisible ones that could fake a line
/// break in a viewer, such as U+2028) escaped as `\n`, `\r`, `\t`, `\0` or `\u{..}`, and a
/// backslash doubled so that an escape cannot be forged. Everything else, non-ASCII letters
/// included, is shown as it is. For log fields: `info!(user = %Escaped(&name), ...)`.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.0;
        // Most values need nothing: write them in one piece.
        if !text.chars().any(needs_escape) {
            return f.write_str(text);
        }
        for c in text.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                '\0' => f.write_str("\\0")?,
                c if needs_escape(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        // Line and paragraph separators, and the bidirectional overrides that reorder what a
        // terminal shows.
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A whole message (or its header) as text for a terminal: its lines as lines (CR LF shown as
/// a line break, a tab as a tab), every other control or invisible character escaped as in
/// [`Escaped`], so that what a stranger wrote cannot move the cursor, clear the screen or fake
/// a line of the tool's own output. Octets that are not UTF-8 are shown as U+FFFD.
pub fn for_terminal(message: &[u8]) -> String {
    let text = String::from_utf8_lossy(message);
    let mut out = String::with_capacity(text.len());
    let mut lines = text.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        for (n, piece) in line.split('\t').enumerate() {
            if n > 0 {
                out.push('\t');
            }
            out.push_str(&Escaped(piece).to_string());
        }
        if lines.peek().is_some() {
            out.push('\n');
        }
    }
    out
}

/// A value that would break the line it is written into.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} contains {found}, which would break the line it goes into")]
pub struct LineBreak {
    /// What the value is (`"ORCPT"`, `"HELO name"`, ...).
    pub what: &'static str,
    /// `"CR"`, `"LF"` or `"NUL"`.
    pub found: &'static str,
}

/// `value` if it holds no CR, LF or NUL: the guard every writer of a line-based protocol or a
/// header field calls on what it did not make itself.
pub fn one_line<'a>(what: &'static str, value: &'a str) -> Result<&'a str, LineBreak> {
    match value.bytes().find(|b| matches!(b, b'\r' | b'\n' | b'\0')) {
        None => Ok(value),
        Some(b) => Err(LineBreak {
            what,
            found: match b {
                b'\r' => "CR",
                b'\n' => "LF",
                _ => "NUL",
            },
        }),
    }
}

/// Whether `value` has a control character (C0, DEL or C1): what no address, name or
/// identifier from a client may carry.
pub fn has_control(value: &str) -> bool {
    value.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_shows_every_control_character() {
        assert_eq!(Escaped("alice").to_string(), "alice");
        assert_eq!(Escaped("jörg@bücher.test").to_string(), "jörg@bücher.test");
        assert_eq!(
            Escaped("x\r\noutcome=Success user=root").to_string(),
            "x\\r\\noutcome=Success user=root"
        );
        assert_eq!(
            Escaped("a\0b\tc\x1b[31m").to_string(),
            "a\\0b\\tc\\u{1b}[31m"
        );
        assert_eq!(Escaped("a\u{2028}b").to_string(), "a\\u{2028}b");
        // A backslash is doubled, so `\n` in the text cannot pass for an escaped newline.
        assert_eq!(Escaped("a\\nb").to_string(), "a\\\\nb");
        assert_eq!(format!("{:?}", Escaped("a\nb")), "\"a\\nb\"");
    }

    #[test]
    fn a_message_for_the_terminal_keeps_its_lines_and_tabs_only() {
        let message = b"Subject: hi\r\n\tthere\r\nX: \x1b[2J\x07\r\n\r\nbare\nlf\rcr\xff\r\n";
        assert_eq!(
            for_terminal(message),
            "Subject: hi\n\tthere\nX: \\u{1b}[2J\\u{7}\n\nbare\\nlf\\rcr\u{fffd}\n"
        );
    }

    #[test]
    fn one_line_refuses_line_breaks_and_nul() {
        assert_eq!(one_line("v", "RCPT TO:<a@b>"), Ok("RCPT TO:<a@b>"));
        for (bad, found) in [("a\rb", "CR"), ("a\nb", "LF"), ("a\0b", "NUL")] {
            assert_eq!(one_line("v", bad), Err(LineBreak { what: "v", found }));
        }
        assert!(has_control("a\u{7f}"));
        assert!(has_control("a\u{85}"));
        assert!(!has_control("äöü"));
    }
}
