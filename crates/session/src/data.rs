//! Framing of message data: DATA (dot-stuffed, ended by `CRLF . CRLF`) and BDAT chunks.
//!
//! Both are strict about line endings. A CR must be followed by LF and an LF must follow a CR;
//! a NUL is never allowed. Anything else makes the message *tainted*: framing carries on to the
//! real end of the data (so the session stays in step with the client) and the message is then
//! refused. This is what defeats SMTP smuggling: `\n.\n`, `\n.\r\n`, `\r.\r`, `\r.\n`, `\n.\r`
//! and `\r\n\0.\r\n` never end the data, and whatever follows them is part of a refused message,
//! never a second one.

/// The state carried across reads while message data arrives.
#[derive(Debug)]
pub struct DataFramer {
    /// DATA: undo dot-stuffing and stop at `CRLF . CRLF`. BDAT: neither.
    dot_stuffed: bool,
    at_line_start: bool,
    /// The current line so far is a single `.` (DATA only).
    dot_line: bool,
    pending_cr: bool,
    tainted: bool,
    /// Octets of message content seen, whether kept or not.
    size: u64,
    max_size: u64,
    /// The memory budget was used up: nothing more is kept, and the message will be refused
    /// for now.
    dropping: bool,
}

/// What a call to [`DataFramer::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// All input was consumed; the data goes on.
    NeedMore,
    /// The end of data was found after this many input octets.
    End { consumed: usize },
}

/// How the data turned out, once it has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// A bare CR, a bare LF or a NUL was seen.
    BadLineEndings,
    /// More than the maximum size was sent; the excess was not kept.
    TooBig,
    /// The memory for messages in progress was used up on the way ([`DataFramer::drop_content`]).
    NoMemory,
}

impl DataFramer {
    /// For `DATA`: the client's lines are dot-stuffed and end with `CRLF . CRLF`.
    pub fn data(max_size: u64) -> DataFramer {
        DataFramer::new(true, max_size)
    }

    /// For a sequence of `BDAT` chunks: raw octets, the length given by each command.
    pub fn bdat(max_size: u64) -> DataFramer {
        DataFramer::new(false, max_size)
    }

    fn new(dot_stuffed: bool, max_size: u64) -> DataFramer {
        DataFramer {
            dot_stuffed,
            at_line_start: true,
            dot_line: false,
            pending_cr: false,
            tainted: false,
            size: 0,
            max_size,
            dropping: false,
        }
    }

    /// Octets of content received so far (after dot-unstuffing).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Keep nothing more (the memory budget is used up): framing goes on to the end of the
    /// data, which is then [`Verdict::NoMemory`].
    pub fn drop_content(&mut self) {
        self.dropping = true;
    }

    /// Whether [`DataFramer::drop_content`] was called.
    pub fn is_dropping(&self) -> bool {
        self.dropping
    }

    /// Octets of content kept so far (the size, up to the maximum; nothing when dropping).
    pub fn kept(&self) -> u64 {
        self.size.min(self.max_size)
    }

    /// Whether a bare CR, a bare LF or a NUL has been seen (a CR at the very end of the input
    /// so far is not yet bare: its LF may come next).
    pub fn is_tainted(&self) -> bool {
        self.tainted
    }

    /// Consumes `input`, appending message content to `out` while it is under the size limit.
    /// BDAT callers pass exactly the chunk's octets and get `NeedMore` back.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Progress {
        let mut i = 0;
        while i < input.len() {
            // Copy the run of ordinary octets up to the next CR, LF or NUL in one go.
            let run_end = input[i..]
                .iter()
                .position(|&b| matches!(b, b'\r' | b'\n' | 0))
                .map_or(input.len(), |p| i + p);
            if run_end > i {
                if self.pending_cr {
                    self.bare_cr(out);
                }
                let mut run = &input[i..run_end];
                if self.dot_stuffed && self.at_line_start && run[0] == b'.' {
                    run = &run[1..];
                    self.dot_line = run.is_empty();
                }
                if !run.is_empty() {
                    self.dot_line = false;
                }
                self.at_line_start = false;
                self.emit(run, out);
                i = run_end;
                continue;
            }
            let b = input[i];
            i += 1;
            match b {
                b'\n' if self.pending_cr => {
                    self.pending_cr = false;
                    if self.dot_stuffed && self.dot_line {
                        return Progress::End { consumed: i };
                    }
                    self.emit(b"\r\n", out);
                    self.at_line_start = true;
                    self.dot_line = false;
                }
                b'\r' => {
                    if self.pending_cr {
                        self.bare_cr(out);
                    }
                    self.pending_cr = true;
                }
                _ => {
                    // A bare LF (no CR before it) or a NUL.
                    if self.pending_cr {
                        self.bare_cr(out);
                    }
                    self.tainted = true;
                    self.at_line_start = false;
                    self.dot_line = false;
                    self.emit(&[b], out);
                }
            }
        }
        Progress::NeedMore
    }

    /// Call when the data has ended (DATA's end marker seen, or the last BDAT chunk consumed).
    pub fn finish(mut self, out: &mut Vec<u8>) -> Verdict {
        if self.pending_cr {
            self.bare_cr(out);
        }
        if self.tainted {
            Verdict::BadLineEndings
        } else if self.size > self.max_size {
            Verdict::TooBig
        } else if self.dropping {
            Verdict::NoMemory
        } else {
            Verdict::Clean
        }
    }

    fn bare_cr(&mut self, out: &mut Vec<u8>) {
        self.pending_cr = false;
        self.tainted = true;
        self.at_line_start = false;
        self.dot_line = false;
        self.emit(b"\r", out);
    }

    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        // Content past the limit is counted, not kept: the message will be refused anyway.
        let room = match self.dropping {
            true => 0,
            false => self.max_size.saturating_sub(self.size),
        };
        let keep = bytes.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        out.extend_from_slice(&bytes[..keep]);
        self.size += bytes.len() as u64;
    }
}

#[cfg(test)]
mod tests;
