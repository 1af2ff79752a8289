//! Our own addresses, so that delivery never connects to itself: mail whose MX (or relay) is
//! this server would come straight back in, and with a `*` route go out again, a loop that
//! only the hop limit ends. Postfix calls this "mail for X loops back to myself".

use std::net::{IpAddr, SocketAddr};

/// Where this server listens: its listeners' addresses, and for a listener on a wildcard
/// address (`0.0.0.0`, `[::]`) every address of the machine's interfaces.
#[derive(Debug, Clone, Default)]
pub struct OwnAddresses {
    pub listeners: Vec<SocketAddr>,
    /// The machine's interface addresses (for wildcard listeners).
    pub interfaces: Vec<IpAddr>,
}

impl OwnAddresses {
    /// Whether connecting to `target` would reach one of our own listeners.
    pub fn is_self(&self, target: SocketAddr) -> bool {
        let ip = unmapped(target.ip());
        self.listeners.iter().any(|l| {
            l.port() == target.port()
                && (unmapped(l.ip()) == ip
                    || (l.ip().is_unspecified()
                        && (ip.is_loopback() || self.interfaces.contains(&ip))))
        })
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_and_wildcards() {
        let own = OwnAddresses {
            listeners: vec![
                "127.0.0.1:2525".parse().unwrap(),
                "0.0.0.0:25".parse().unwrap(),
            ],
            interfaces: vec!["192.0.2.10".parse().unwrap()],
        };
        assert!(own.is_self("127.0.0.1:2525".parse().unwrap()));
        assert!(own.is_self("[::ffff:127.0.0.1]:2525".parse().unwrap()));
        assert!(!own.is_self("127.0.0.2:2525".parse().unwrap()));
        assert!(!own.is_self("127.0.0.1:2526".parse().unwrap()));
        assert!(own.is_self("192.0.2.10:25".parse().unwrap()));
        assert!(own.is_self("127.0.0.9:25".parse().unwrap()));
        assert!(!own.is_self("192.0.2.11:25".parse().unwrap()));
    }
}
