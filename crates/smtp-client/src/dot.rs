//! Dot-stuffing (RFC 5321 4.5.2) in chunks: a body is sent as it is read, never copied whole.

/// The state between chunks: whether the next byte starts a line, and the last byte written.
#[derive(Debug, Clone, Copy)]
pub struct DotStuffer {
    at_line_start: bool,
    last_two: [u8; 2],
    written: bool,
}

impl Default for DotStuffer {
    fn default() -> DotStuffer {
        DotStuffer {
            at_line_start: true,
            last_two: [0, 0],
            written: false,
        }
    }
}

impl DotStuffer {
    /// Appends `input` to `out` with a dot doubled at the start of every line.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 1);
        let mut start = 0;
        for (i, &b) in input.iter().enumerate() {
            if self.at_line_start && b == b'.' {
                out.extend_from_slice(&input[start..i]);
                out.push(b'.');
                start = i;
            }
            self.at_line_start = b == b'\n';
        }
        out.extend_from_slice(&input[start..]);
        for &b in input.iter().rev().take(2).rev() {
            self.last_two = [self.last_two[1], b];
        }
        self.written |= !input.is_empty();
    }

    /// Appends the end of the data: a CRLF when the body did not end with one, then `.CRLF`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.written && self.last_two != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(chunks: &[&[u8]]) -> Vec<u8> {
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::new();
        for chunk in chunks {
            stuffer.push(chunk, &mut out);
        }
        stuffer.finish(&mut out);
        out
    }

    #[test]
    fn dots_at_line_starts_are_doubled_across_chunks() {
        assert_eq!(
            stuffed(&[b".a\r\n.b\r\nc.d\r\n"]),
            b"..a\r\n..b\r\nc.d\r\n.\r\n"
        );
        assert_eq!(stuffed(&[b"x\r\n", b".", b"y\r\n"]), b"x\r\n..y\r\n.\r\n");
        assert_eq!(stuffed(&[b"x\r", b"\n.y"]), b"x\r\n..y\r\n.\r\n");
        assert_eq!(stuffed(&[b"no end"]), b"no end\r\n.\r\n");
        assert_eq!(stuffed(&[]), b".\r\n");
        assert_eq!(stuffed(&[b"a\r", b"\n"]), b"a\r\n.\r\n");
        // The same as one piece, however it is cut.
        let body = b"Subject: x\r\n\r\n.\r\n..\r\nend.\r\n.";
        let whole = stuffed(&[body]);
        for cut in 0..body.len() {
            assert_eq!(
                stuffed(&[&body[..cut], &body[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
    }
}
