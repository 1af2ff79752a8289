//! Where a scanner listens: `host:port` (also `inet:host:port`, as Postfix writes milters)
//! or `unix:/path`.

use std::fmt;
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(String),
    Unix(PathBuf),
}

/// A connection to a scanner.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Endpoint {
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            return match path.starts_with('/') {
                true => Ok(Endpoint::Unix(PathBuf::from(path))),
                false => Err(format!("{text:?}: a Unix socket needs an absolute path")),
            };
        }
        let address = text.strip_prefix("inet:").unwrap_or(text);
        match address.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Endpoint::Tcp(address.to_owned()))
            }
            _ => Err(format!(
                "{text:?} is not an address like 127.0.0.1:8891 or unix:/run/scanner.sock"
            )),
        }
    }

    pub async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        Ok(match self {
            Endpoint::Tcp(address) => {
                let stream = tokio::net::TcpStream::connect(address.as_str()).await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(address) => f.write_str(address),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Endpoint::parse("inet:127.0.0.1:8891"),
            Ok(Endpoint::Tcp("127.0.0.1:8891".into()))
        );
        assert_eq!(
            Endpoint::parse("[::1]:3310"),
            Ok(Endpoint::Tcp("[::1]:3310".into()))
        );
        assert_eq!(
            Endpoint::parse("unix:/run/clamav/clamd.ctl"),
            Ok(Endpoint::Unix("/run/clamav/clamd.ctl".into()))
        );
        assert!(Endpoint::parse("unix:relative").is_err());
        assert!(Endpoint::parse("localhost").is_err());
    }
}
