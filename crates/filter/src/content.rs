//! Built-in content checks, run on the whole message before the reply to DATA.
//!
//! So far RFC 5322 sanity: exactly one `From:`, a `Date:`, no singleton header field given
//! twice (RFC 5322 3.6), and no line longer than 998 octets (2.1.1). The message is read as
//! received; header fields are matched by name, without regard to case.

/// What to do with a message that fails a check of its form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContentAction {
    /// No check.
    #[default]
    Off,
    /// 550 5.6.0 before the reply to DATA: the sending server reports it to the sender.
    Reject,
    /// Accept it into quarantine: never delivered, never bounced.
    Quarantine,
}

/// Why a message is not a well-formed RFC 5322 message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    NoFrom,
    NoDate,
    /// A header field that may appear at most once appears more often.
    Duplicate(&'static str),
    /// A line longer than 998 octets, on this line (1-based).
    LineTooLong(usize),
    /// The header section is not followed by an empty line, or is larger than the limit.
    BadHeaderSection,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::NoFrom => f.write_str("no From: header field (RFC 5322 3.6)"),
            Violation::NoDate => f.write_str("no Date: header field (RFC 5322 3.6)"),
            Violation::Duplicate(name) => {
                write!(
                    f,
                    "the {name}: header field appears more than once (RFC 5322 3.6)"
                )
            }
            Violation::LineTooLong(line) => {
                write!(f, "line {line} is longer than 998 octets (RFC 5322 2.1.1)")
            }
            Violation::BadHeaderSection => f.write_str("malformed header section"),
        }
    }
}

/// Header fields RFC 5322 3.6 allows at most once.
const SINGLETONS: [&str; 10] = [
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Bcc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "Subject",
];

/// The header section may be this large at most.
const MAX_HEADER_SECTION: usize = 1 << 20;

/// Checks a message (CRLF line ends, our `Received:` header included, which the check
/// skips like every trace field).
pub fn rfc5322(message: &[u8]) -> Result<(), Violation> {
    for (n, line) in message.split(|&b| b == b'\n').enumerate() {
        let len = line.strip_suffix(b"\r").unwrap_or(line).len();
        if len > 998 {
            return Err(Violation::LineTooLong(n + 1));
        }
    }
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| message.ends_with(b"\r\n").then_some(message.len()))
        .ok_or(Violation::BadHeaderSection)?;
    if end > MAX_HEADER_SECTION {
        return Err(Violation::BadHeaderSection);
    }
    let mut counts = [0usize; SINGLETONS.len()];
    let (mut from, mut date) = (0, 0);
    for line in message[..end].split(|&b| b == b'\n') {
        // Continuation lines of folded fields start with white space.
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') || line.len() <= 1 {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(Violation::BadHeaderSection);
        };
        let name = String::from_utf8_lossy(&line[..colon]);
        let name = name.trim();
        if name.eq_ignore_ascii_case("From") {
            from += 1;
        }
        if name.eq_ignore_ascii_case("Date") {
            date += 1;
        }
        if let Some(i) = SINGLETONS.iter().position(|s| s.eq_ignore_ascii_case(name)) {
            counts[i] += 1;
        }
    }
    if from == 0 {
        return Err(Violation::NoFrom);
    }
    if date == 0 {
        return Err(Violation::NoDate);
    }
    if date > 1 {
        return Err(Violation::Duplicate("Date"));
    }
    match counts.iter().position(|&c| c > 1) {
        Some(i) => Err(Violation::Duplicate(SINGLETONS[i])),
        None => Ok(()),
    }
}

/// [`rfc5322`] for a spooled message: the head as a message of its own (the header section
/// is all there), then the rest read from `tail` a piece at a time for lines longer than 998
/// octets, numbered on from the head's. Blocking: run it on the blocking pool.
pub fn rfc5322_spooled(
    head: &[u8],
    tail: impl std::io::Read,
) -> std::io::Result<Result<(), Violation>> {
    if let Err(v) = rfc5322(head) {
        return Ok(Err(v));
    }
    let head_lines = head.iter().filter(|&&b| b == b'\n').count();
    // The head ends with the empty line, so the rest starts a line.
    let mut line = head_lines + 1;
    let mut len = 0usize;
    let mut buf = vec![0; 64 * 1024];
    let mut tail = tail;
    loop {
        let n = match tail.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                line += 1;
                len = 0;
            } else if b != b'\r' {
                len += 1;
                if len > 998 {
                    return Ok(Err(Violation::LineTooLong(line)));
                }
            }
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spooled message is judged as the same message in memory.
    #[test]
    fn a_spooled_message_is_checked_as_a_whole_one() {
        let (head, rest) = GOOD.split_at(GOOD.find("\r\n\r\n").unwrap() + 4);
        assert_eq!(
            rfc5322_spooled(head.as_bytes(), rest.as_bytes()).unwrap(),
            Ok(())
        );
        let long = format!("line\r\n{}\r\n", "x".repeat(999));
        let whole = format!("{GOOD}{long}");
        assert_eq!(
            rfc5322_spooled(head.as_bytes(), format!("{rest}{long}").as_bytes()).unwrap(),
            rfc5322(whole.as_bytes())
        );
        assert!(rfc5322(whole.as_bytes()).is_err());
        let no_date = GOOD.replace("Date: Sun, 22 Nov 2026 17:00:00 +0000\r\n", "");
        let (head, rest) = no_date.split_at(no_date.find("\r\n\r\n").unwrap() + 4);
        assert_eq!(
            rfc5322_spooled(head.as_bytes(), rest.as_bytes()).unwrap(),
            Err(Violation::NoDate)
        );
    }

    const GOOD: &str = "Received: from x\r\n\tby y; Sun, 22 Nov 2026 17:00:00 +0000\r\n\
        From: a@example.org\r\nDate: Sun, 22 Nov 2026 17:00:00 +0000\r\nSubject: hi\r\n\
        To: b@example.test,\r\n c@example.test\r\n\r\nbody\r\n";

    #[test]
    fn a_proper_message_passes() {
        assert_eq!(rfc5322(GOOD.as_bytes()), Ok(()));
    }

    #[test]
    fn each_violation_is_named() {
        let check = |s: String| rfc5322(s.as_bytes());
        assert_eq!(
            check(GOOD.replace("From: a@example.org\r\n", "")),
            Err(Violation::NoFrom)
        );
        assert_eq!(
            check(GOOD.replace("Date:", "X-Date:")),
            Err(Violation::NoDate)
        );
        assert_eq!(
            check(GOOD.replace("Subject: hi\r\n", "Subject: hi\r\nsubject: again\r\n")),
            Err(Violation::Duplicate("Subject"))
        );
        assert_eq!(
            check(GOOD.replace("body", &"x".repeat(999))),
            Err(Violation::LineTooLong(9))
        );
        assert_eq!(
            check(GOOD.replace("Subject: hi", "no colon here")),
            Err(Violation::BadHeaderSection)
        );
    }
}
