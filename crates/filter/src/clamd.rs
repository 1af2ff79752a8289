//! ClamAV's clamd over its `INSTREAM` command: the message in chunks, then the verdict. A
//! virus is `554 5.7.0` naming the signature; anything but a clear answer is an error (the
//! pipeline's `on_error` decides).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::ScanError;
use crate::net::Endpoint;
use crate::pipeline::Step;
use backstop_types::Reply;

#[derive(Debug, Clone)]
pub struct Clamd {
    pub endpoint: Endpoint,
}

/// clamd's default StreamMaxLength is 25 MB; chunks are far below its limits.
const CHUNK: usize = 64 * 1024;

impl Clamd {
    /// Scans `message`, then `tail` read from its spool file when there is one.
    pub async fn check(
        &self,
        message: &[u8],
        tail: Option<&backstop_types::Spooled>,
    ) -> Result<Step, ScanError> {
        let failed = |source| ScanError::Network {
            scanner: "clamd",
            endpoint: self.endpoint.clone(),
            source,
        };
        let mut stream = crate::net::connect(&self.endpoint).await.map_err(failed)?;
        stream.write_all(b"zINSTREAM\0").await.map_err(failed)?;
        for chunk in message.chunks(CHUNK) {
            let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            stream.write_all(&len.to_be_bytes()).await.map_err(failed)?;
            stream.write_all(chunk).await.map_err(failed)?;
        }
        if let Some(tail) = tail {
            let mut reader = crate::spooled::Reader::open(tail).await?;
            while let Some(chunk) = reader.next(CHUNK).await? {
                let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
                stream.write_all(&len.to_be_bytes()).await.map_err(failed)?;
                stream.write_all(chunk).await.map_err(failed)?;
            }
        }
        stream.write_all(&[0; 4]).await.map_err(failed)?;
        stream.flush().await.map_err(failed)?;
        let mut answer = Vec::new();
        stream
            .take(4096)
            .read_to_end(&mut answer)
            .await
            .map_err(failed)?;
        let answer = String::from_utf8_lossy(&answer);
        verdict(answer.trim_end_matches(['\0', '\n'])).map_err(|reason| ScanError::Protocol {
            scanner: "clamd",
            endpoint: self.endpoint.clone(),
            reason,
        })
    }
}

/// `stream: OK`, `stream: Eicar-Signature FOUND`, or an error.
fn verdict(answer: &str) -> Result<Step, String> {
    let result = answer.strip_prefix("stream: ").unwrap_or(answer);
    if result == "OK" {
        return Ok(Step::Continue(Vec::new()));
    }
    match result.strip_suffix(" FOUND") {
        Some(signature) => Ok(Step::Refuse(Reply::virus_found(signature))),
        None => Err(format!("answered {answer:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        assert_eq!(verdict("stream: OK"), Ok(Step::Continue(Vec::new())));
        assert_eq!(
            verdict("stream: Eicar-Test-Signature FOUND"),
            Ok(Step::Refuse(Reply::virus_found("Eicar-Test-Signature")))
        );
        assert!(verdict("INSTREAM size limit exceeded. ERROR").is_err());
        assert!(verdict("").is_err());
    }
}
