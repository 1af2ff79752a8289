//! One connection, one request, under a deadline.

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::{read_request, HttpError, Limits, Method, Request, Response};

/// The longest a refused request's leftovers are read and discarded after the error
/// response, so closing does not reset the connection before the peer has read it.
const LINGER: Duration = Duration::from_secs(2);

/// Serves one request on `stream` and closes it.
///
/// The request must arrive within `deadline`, or the connection is dropped without a
/// response (`ErrorKind::TimedOut`): a slow or silent peer holds nothing for long. A
/// refused request gets its [`HttpError::status`] and a one-line text body; a peer that
/// sent nothing gets nothing. Otherwise `handler`'s response is written (head only for
/// `HEAD`), within `deadline` again, and the write half is shut down.
pub async fn serve_one<S, F, Fut>(
    mut stream: S,
    limits: &Limits,
    deadline: Duration,
    handler: F,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let read = timeout(deadline, read_request(&mut stream, limits)).await;
    let (response, head_only, refused) = match read {
        Err(_) => {
            tracing::debug!("dropped an HTTP client that was too slow to send its request");
            return Err(io::ErrorKind::TimedOut.into());
        }
        Ok(Err(HttpError::Closed)) => return Ok(()),
        Ok(Err(HttpError::Io(e))) => return Err(e),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, status = e.status(), "refused an HTTP request");
            (Response::text(e.status(), &format!("{e}\n")), false, true)
        }
        Ok(Ok(request)) => {
            let head_only = request.method == Method::Head;
            (handler(request).await, head_only, false)
        }
    };
    let write = async {
        response.write_to(&mut stream, head_only).await?;
        stream.shutdown().await
    };
    timeout(deadline, write)
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    if refused {
        linger(&mut stream, limits, deadline.min(LINGER)).await;
    }
    Ok(())
}

/// Reads and discards what the peer still sends, up to a head and a body's worth, until it
/// closes or `time` has passed.
async fn linger<S: AsyncRead + Unpin>(stream: &mut S, limits: &Limits, time: Duration) {
    let cap = limits.max_head.saturating_add(limits.max_body);
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut total = 0usize;
        while total < cap {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    // Whether it finished or timed out, the connection is closed next.
    let _ = timeout(time, drain).await;
}
