//! Replies from a next hop, read with smtp-proto's client-side parsers: [`ReplyReader`] takes
//! bytes as they come and gives complete replies (a line is at most 4096 octets, a reply at
//! most [`MAX_LINES`] lines); [`Capabilities`] is what an EHLO reply offers.

use backstop_types::{EnhancedStatus, RemoteReply};
use smtp_proto::response::parser::ResponseReceiver;

/// Lines a reply may have (an EHLO reply has one per extension).
pub const MAX_LINES: usize = 100;

/// Reads replies from a stream of bytes.
#[derive(Default)]
pub struct ReplyReader {
    receiver: ResponseReceiver,
    /// Received, not yet parsed.
    pending: Vec<u8>,
    /// The raw bytes of the reply being read (for EHLO, parsed a second time).
    raw: Vec<u8>,
}

/// What is wrong with what the next hop sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReply {
    #[error("a reply line that does not start with a code")]
    Syntax,
    #[error("a reply longer than 4096 octets or {MAX_LINES} lines")]
    TooLong,
}

/// One complete reply, with its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complete {
    pub reply: RemoteReply,
    pub raw: Vec<u8>,
}

impl ReplyReader {
    /// Takes more bytes from the next hop.
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Whether bytes beyond the replies read so far have arrived (after a 220 to STARTTLS
    /// there must be none: CVE-2011-0411).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The next complete reply, if the bytes so far hold one.
    pub fn next_reply(&mut self) -> Result<Option<Complete>, BadReply> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let mut iter = self.pending.iter();
        let result = self.receiver.parse(&mut iter);
        let consumed = self.pending.len() - iter.as_slice().len();
        self.raw.extend_from_slice(&self.pending[..consumed]);
        self.pending.drain(..consumed);
        match result {
            Ok(response) => {
                self.receiver.reset();
                let raw = std::mem::take(&mut self.raw);
                let lines = raw.iter().filter(|&&b| b == b'\n').count();
                if lines > MAX_LINES {
                    return Err(BadReply::TooLong);
                }
                Ok(Some(Complete {
                    reply: remote_reply(response.code, response.esc, &response.message),
                    raw,
                }))
            }
            Err(smtp_proto::Error::NeedsMoreData { .. }) => {
                if self.raw.len() > 4096 * 4 {
                    return Err(BadReply::TooLong);
                }
                Ok(None)
            }
            Err(smtp_proto::Error::ResponseTooLong) => Err(BadReply::TooLong),
            Err(_) => Err(BadReply::Syntax),
        }
    }
}

/// A reply as backstop keeps it: the code, the enhanced status (only when it is of the code's
/// class), the text with lines joined by `\n` and no control characters.
fn remote_reply(code: u16, esc: [u8; 3], message: &str) -> RemoteReply {
    let class = (code / 100) as u8;
    let status = (esc[0] != 0 && esc[0] == class && matches!(class, 2 | 4 | 5))
        .then(|| EnhancedStatus(esc[0], u16::from(esc[1]), u16::from(esc[2])));
    // smtp-proto keeps the enhanced code of the first line only; later lines may repeat it.
    let text: String = message
        .split('\n')
        .map(|line| {
            let line = line.trim_end_matches('\r');
            let line = match status {
                Some(s) => line
                    .strip_prefix(&format!("{s} "))
                    .unwrap_or(line)
                    .to_owned(),
                None => line.to_owned(),
            };
            line.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("\n");
    RemoteReply { code, status, text }
}

/// What a next hop offers after EHLO (or LHLO).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub starttls: bool,
    /// Its SIZE limit, when it gave one.
    pub size: Option<u64>,
    pub eightbitmime: bool,
    pub binarymime: bool,
    pub smtputf8: bool,
    pub pipelining: bool,
    pub chunking: bool,
    pub dsn: bool,
    pub auth_plain: bool,
}

impl Capabilities {
    /// The capabilities in a complete 250 reply to EHLO or LHLO, as smtp-proto reads them;
    /// an EHLO reply it cannot read offers nothing (what an old server would).
    pub fn parse(raw: &[u8]) -> Capabilities {
        use smtp_proto::*;
        let Ok(ehlo) = EhloResponse::parse(&mut raw.iter()) else {
            return Capabilities::default();
        };
        let has = |ext: u32| ehlo.capabilities & ext != 0;
        Capabilities {
            starttls: has(EXT_START_TLS),
            size: if has(EXT_SIZE) { size_limit(raw) } else { None },
            eightbitmime: has(EXT_8BIT_MIME),
            binarymime: has(EXT_BINARY_MIME),
            smtputf8: has(EXT_SMTP_UTF8),
            pipelining: has(EXT_PIPELINING),
            chunking: has(EXT_CHUNKING),
            dsn: has(EXT_DSN),
            auth_plain: has(EXT_AUTH) && ehlo.auth_mechanisms & AUTH_PLAIN != 0,
        }
    }
}

/// The number after `SIZE` in an EHLO reply, read here: smtp-proto's number wraps past 20
/// digits, and a limit read too small would refuse mail the next hop takes. No number, zero
/// (RFC 1870: no fixed limit) or one too large for a `u64` is no limit.
fn size_limit(raw: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(raw);
    let line = text.lines().skip(1).find_map(|line| {
        let words = line.get(4..)?;
        let mut words = words.split_ascii_whitespace();
        words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("SIZE"))
            .then(|| words.next().map(str::to_owned))
    })??;
    line.parse::<u64>().ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[&[u8]]) -> Vec<Result<RemoteReply, BadReply>> {
        let mut reader = ReplyReader::default();
        let mut out = Vec::new();
        for chunk in bytes {
            reader.push(chunk);
            loop {
                match reader.next_reply() {
                    Ok(Some(c)) => out.push(Ok(c.reply)),
                    Ok(None) => break,
                    Err(e) => {
                        out.push(Err(e));
                        return out;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn replies_in_pieces_and_several_at_once() {
        let got = all(&[
            b"250-mx.test\r\n250 2.1",
            b".5 Ok\r\n550 5.1.1 no\r\n354 go\r\n",
        ]);
        assert_eq!(
            got,
            vec![
                // smtp-proto takes the enhanced status from whichever line has one.
                Ok(RemoteReply {
                    code: 250,
                    status: Some(EnhancedStatus(2, 1, 5)),
                    text: "mx.test\nOk".into()
                }),
                Ok(RemoteReply {
                    code: 550,
                    status: Some(EnhancedStatus(5, 1, 1)),
                    text: "no".into()
                }),
                Ok(RemoteReply {
                    code: 354,
                    status: None,
                    text: "go".into()
                }),
            ]
        );
    }

    #[test]
    fn garbage_and_huge_replies_are_errors_not_panics() {
        assert_eq!(all(&[b"HTTP/1.1 400 Bad\r\n"]), vec![Err(BadReply::Syntax)]);
        let long = vec![b'x'; 10_000];
        let got = all(&[b"250 ", &long]);
        assert_eq!(got, vec![Err(BadReply::TooLong)]);
        let mut many = Vec::new();
        for _ in 0..200 {
            many.extend_from_slice(b"250-x\r\n");
        }
        many.extend_from_slice(b"250 end\r\n");
        assert_eq!(all(&[&many]), vec![Err(BadReply::TooLong)]);
        // Control characters never reach the text.
        let got = all(&[b"550 5.7.1 bad\x1b[31m\x00thing\r\n"]);
        assert_eq!(got[0].as_ref().unwrap().text, "bad?[31m?thing");
        // A status of another class than the code is not taken.
        let got = all(&[b"451 5.7.1 odd\r\n"]);
        assert_eq!(got[0].as_ref().unwrap().status, None);
    }

    #[test]
    fn ehlo_capabilities() {
        let caps = Capabilities::parse(
            b"250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-STARTTLS\r\n250-AUTH LOGIN PLAIN\r\n250-CHUNKING\r\n250-DSN\r\n250 SMTPUTF8\r\n",
        );
        assert_eq!(
            caps,
            Capabilities {
                starttls: true,
                size: Some(1000),
                eightbitmime: true,
                binarymime: false,
                smtputf8: true,
                pipelining: true,
                chunking: true,
                dsn: true,
                auth_plain: true,
            }
        );
        assert_eq!(Capabilities::parse(b"garbage"), Capabilities::default());
        // A limit too large to read is no limit, never a small one.
        let caps = Capabilities::parse(b"250-x\r\n250 SIZE 184467440737095516160\r\n");
        assert_eq!(caps.size, None);
        let caps = Capabilities::parse(b"250-x\r\n250 SIZE 0\r\n");
        assert_eq!(caps.size, None);
    }
}
