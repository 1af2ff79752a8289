//! Reading a spooled message's rest from its file, a piece at a time, for the scanners that
//! stream (clamd, milters). A file shorter than its record says is an error, never a shorter
//! message.

use backstop_types::Spooled;
use tokio::io::AsyncReadExt;

use crate::error::ScanError;

pub(crate) struct Reader {
    file: tokio::fs::File,
    spooled: Spooled,
    left: u64,
    buf: Vec<u8>,
}

impl Reader {
    pub(crate) async fn open(tail: &Spooled) -> Result<Reader, ScanError> {
        let file = tokio::fs::File::open(&tail.path)
            .await
            .map_err(|e| local(tail, &e))?;
        Ok(Reader {
            file,
            spooled: tail.clone(),
            left: tail.len,
            buf: Vec::new(),
        })
    }

    /// The next piece of at most `chunk` octets; `None` at the end.
    pub(crate) async fn next(&mut self, chunk: usize) -> Result<Option<&[u8]>, ScanError> {
        if self.left == 0 {
            return Ok(None);
        }
        let want = usize::try_from(self.left).unwrap_or(chunk).min(chunk);
        self.buf.resize(want, 0);
        let n = self
            .file
            .read(&mut self.buf[..want])
            .await
            .map_err(|e| local(&self.spooled, &e))?;
        if n == 0 {
            let e = backstop_types::body::short(
                &self.spooled.path,
                self.spooled.len - self.left,
                self.spooled.len,
            );
            return Err(local(&self.spooled, &e));
        }
        self.left -= n as u64;
        Ok(Some(&self.buf[..n]))
    }
}

fn local(tail: &Spooled, e: &std::io::Error) -> ScanError {
    ScanError::Local(format!(
        "reading the spooled message {}: {e}",
        tail.path.display()
    ))
}
