//! [`Body`]: a message's octets on their way through the server, small ones in memory and
//! large ones mostly in a spool file.
//!
//! A body is its *head*, always in memory, and, for a message larger than the spool threshold,
//! a *tail* in a file ([`Spooled`]). The head holds every header field (the ones the server
//! prepends and the message's own header section, through the empty line that ends it) and,
//! when there is no tail, the rest of the message too. Prepending a header field touches only
//! the head: a spooled message is never copied to change its header.
//!
//! The only I/O of this crate is here: reading a spooled tail back ([`Body::read_all`],
//! [`Spooled::open`]), with blocking `std::fs` calls that async callers make on the blocking
//! pool or for small reads.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// A message's octets: [`Body::head`] in memory, then the spooled tail if there is one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Body {
    head: Vec<u8>,
    tail: Option<Spooled>,
}

/// The part of a message past its header section, in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    pub path: PathBuf,
    /// Its length in octets (what the file holds).
    pub len: u64,
}

impl Body {
    /// A message held whole in memory.
    pub fn new(bytes: Vec<u8>) -> Body {
        Body {
            head: bytes,
            tail: None,
        }
    }

    /// A message whose header section (and any fields put in front of it) is `head` and whose
    /// rest is in a file.
    pub fn spooled(head: Vec<u8>, tail: Spooled) -> Body {
        Body {
            head,
            tail: Some(tail),
        }
    }

    /// The whole message's length in octets.
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.tail.as_ref().map_or(0, |t| t.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The part in memory: at least the whole header section; everything when not spooled.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The part in memory, to change header fields in place.
    pub fn head_mut(&mut self) -> &mut Vec<u8> {
        &mut self.head
    }

    /// The spooled rest, if any.
    pub fn tail(&self) -> Option<&Spooled> {
        self.tail.as_ref()
    }

    /// The whole message when it is all in memory.
    pub fn in_memory(&self) -> Option<&[u8]> {
        self.tail.is_none().then_some(&self.head[..])
    }

    /// Puts `fields` (whole header fields, CRLF-terminated) on top. Copies the head only.
    pub fn prepend(&mut self, fields: &[u8]) {
        self.head.splice(0..0, fields.iter().copied());
    }

    /// Splits into its head and its spooled tail.
    pub fn into_parts(self) -> (Vec<u8>, Option<Spooled>) {
        (self.head, self.tail)
    }

    /// The whole message in one buffer, reading the tail from its file (blocking). Callers
    /// bound what they read this way: it holds the whole message in memory.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        self.read_all_with_room(0)
    }

    /// [`Body::read_all`] into a buffer with `room` octets to spare (for fields to put on
    /// top without growing it).
    pub fn read_all_with_room(&self, room: usize) -> io::Result<Vec<u8>> {
        let size = usize::try_from(self.len()).unwrap_or(usize::MAX);
        let Some(tail) = &self.tail else {
            let mut out = Vec::with_capacity(size.saturating_add(room));
            out.extend_from_slice(&self.head);
            return Ok(out);
        };
        let mut out = Vec::with_capacity(size.saturating_add(room));
        out.extend_from_slice(&self.head);
        let read = tail.open()?.take(tail.len).read_to_end(&mut out)?;
        if (read as u64) < tail.len {
            return Err(short(&tail.path, read as u64, tail.len));
        }
        Ok(out)
    }

    /// The first `limit` octets of the message (reading the tail as far as needed).
    pub fn read_prefix(&self, limit: usize) -> io::Result<Vec<u8>> {
        let mut out = self.head[..self.head.len().min(limit)].to_vec();
        if let (Some(tail), true) = (&self.tail, out.len() < limit) {
            let want = (limit - out.len()) as u64;
            tail.open()?
                .take(want.min(tail.len))
                .read_to_end(&mut out)?;
        }
        Ok(out)
    }
}

impl Spooled {
    /// Opens the file for reading (blocking).
    pub fn open(&self) -> io::Result<std::fs::File> {
        std::fs::File::open(&self.path)
    }

    /// The same file under another name (after a rename).
    pub fn moved_to(&self, path: &Path) -> Spooled {
        Spooled {
            path: path.to_owned(),
            len: self.len,
        }
    }
}

/// A spool file shorter than its record says: the message cannot be sent whole.
pub fn short(path: &Path, read: u64, expected: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "spool file {}: {read} octets where {expected} were stored",
            path.display()
        ),
    )
}

/// A body equals octets when it is all in memory and they are its octets (for tests and
/// small messages; a spooled body equals no slice).
impl<const N: usize> PartialEq<&[u8; N]> for Body {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.in_memory() == Some(&other[..])
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::new(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spooled_body_reads_back_whole_and_in_part() {
        let dir = std::env::temp_dir().join(format!("backstop-body-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tail");
        std::fs::write(&path, b"line one\r\nline two\r\n").unwrap();
        let mut body = Body::spooled(
            b"Subject: x\r\n\r\n".to_vec(),
            Spooled {
                path: path.clone(),
                len: 20,
            },
        );
        body.prepend(b"Received: by us\r\n");
        assert_eq!(body.len(), 17 + 14 + 20);
        assert_eq!(
            body.read_all().unwrap(),
            b"Received: by us\r\nSubject: x\r\n\r\nline one\r\nline two\r\n"
        );
        assert_eq!(
            body.read_prefix(35).unwrap(),
            b"Received: by us\r\nSubject: x\r\n\r\nline"
        );
        assert_eq!(body.read_prefix(5).unwrap(), b"Recei");
        assert!(body.in_memory().is_none());
        // A file cut short is an error, never a short message.
        std::fs::write(&path, b"line one").unwrap();
        assert!(body.read_all().is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_in_memory_body_is_its_head() {
        let mut body = Body::new(b"Subject: x\r\n\r\nhi\r\n".to_vec());
        body.prepend(b"X-A: 1\r\n");
        assert_eq!(
            body.in_memory().unwrap(),
            b"X-A: 1\r\nSubject: x\r\n\r\nhi\r\n"
        );
        assert_eq!(body.read_prefix(3).unwrap(), b"X-A");
    }
}
