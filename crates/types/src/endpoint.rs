//! Where a peer listens: `host:port` (also `inet:host:port`, as Postfix writes milters) or
//! `unix:/path`. One type for every next hop and scanner (SMTP and LMTP relays, milters,
//! rspamd, clamd, Dovecot's auth socket), parsed in one place; connecting is each client's.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `host:port`, the host a name or an address (`[::1]:25` for IPv6).
    Tcp(String),
    /// A Unix socket, by its absolute path.
    Unix(PathBuf),
}

impl Endpoint {
    /// Reads `host:port`, `inet:host:port` or `unix:/absolute/path`; the error says what is
    /// wrong in plain words.
    pub fn parse(text: &str) -> Result<Endpoint, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            return match path.starts_with('/') {
                true => Ok(Endpoint::Unix(PathBuf::from(path))),
                false => Err(format!("{text:?}: a Unix socket needs an absolute path")),
            };
        }
        let address = text.strip_prefix("inet:").unwrap_or(text);
        let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
        match address.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && host.chars().all(fine) && port.parse::<u16>().is_ok() =>
            {
                Ok(Endpoint::Tcp(address.to_owned()))
            }
            _ => Err(format!(
                "{text:?} is not an address like 127.0.0.1:8891 or unix:/run/scanner.sock"
            )),
        }
    }

    /// The IP address and port, when the host is an address rather than a name.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Tcp(address) => address.parse().ok(),
            Endpoint::Unix(_) => None,
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(address: SocketAddr) -> Endpoint {
        Endpoint::Tcp(address.to_string())
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
            Endpoint::parse("localhost:11333"),
            Ok(Endpoint::Tcp("localhost:11333".into()))
        );
        assert_eq!(
            Endpoint::parse("unix:/run/clamav/clamd.ctl"),
            Ok(Endpoint::Unix("/run/clamav/clamd.ctl".into()))
        );
        assert_eq!(
            Endpoint::parse("[::1]:25").unwrap().socket_addr(),
            Some("[::1]:25".parse().unwrap())
        );
        assert_eq!(Endpoint::parse("localhost:25").unwrap().socket_addr(), None);
        for bad in [
            "unix:relative",
            "localhost",
            ":25",
            "host:99999",
            "a b:25",
            "x\r\n:25",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?}");
        }
    }
}
