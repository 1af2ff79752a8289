//! Connecting to a scanner at an [`Endpoint`] (`host:port` or `unix:/path`; the type and its
//! parser are `backstop_types`'s, shared with the SMTP client).

use tokio::io::{AsyncRead, AsyncWrite};

pub use backstop_types::Endpoint;

/// A connection to a scanner.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Opens a connection to `endpoint` (TCP with Nagle off, or a Unix socket).
pub async fn connect(endpoint: &Endpoint) -> std::io::Result<Box<dyn Stream>> {
    Ok(match endpoint {
        Endpoint::Tcp(address) => {
            let stream = tokio::net::TcpStream::connect(address.as_str()).await?;
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
        Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
    })
}
