//! Connection limits and client networks.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// An IP network in CIDR form, e.g. `192.0.2.0/24` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

/// The text is not `address/prefix` with a prefix that fits the address family.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a network like 192.0.2.0/24 or 2001:db8::/32")]
pub struct BadNetwork(String);

impl FromStr for IpNetwork {
    type Err = BadNetwork;

    fn from_str(s: &str) -> Result<IpNetwork, BadNetwork> {
        let bad = || BadNetwork(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(IpNetwork { addr, prefix })
    }
}

impl IpNetwork {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The address a client is known by everywhere: an IPv4 client that reached an IPv6 socket
/// as `::ffff:a.b.c.d` is `a.b.c.d` again, for every check, log line and header.
pub fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What one client is, for limits: its IPv4 address, or the /64 its IPv6 address is in (a
/// host is usually given a whole /64, so counting each address would let one client take
/// every slot).
pub fn client_network(ip: IpAddr) -> IpAddr {
    match unmapped(ip) {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u64::MAX as u128)).into()),
        v4 => v4,
    }
}

/// Counts open connections, in total and per client (an IPv6 client is its /64), across all
/// listeners.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    inner: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_ip: usize,
    /// Whether the server is under stress now; sessions waiting for input watch it, so that
    /// those already idle get the short timeout too when stress begins.
    stress: Arc<tokio::sync::watch::Sender<bool>>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<Client, usize>,
}

/// Whose connections count together: a network client (an IPv6 one as its /64), or a local
/// user of the sendmail socket (by uid, so that one user cannot fill another's places, nor
/// those of programs that connect from 127.0.0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    Ip(IpAddr),
    LocalUser(u32),
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
}

/// Holds one connection's place; frees it when dropped.
#[derive(Debug)]
pub struct ConnectionSlot {
    limits: ConnectionLimits,
    client: Client,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            inner: Arc::default(),
            max_total,
            max_per_ip,
            stress: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }

    /// The same counts of open connections under new limits (a reloaded config): sessions
    /// admitted before still count.
    pub fn resized(&self, max_total: usize, max_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            inner: Arc::clone(&self.inner),
            max_total,
            max_per_ip,
            stress: Arc::clone(&self.stress),
        }
    }

    pub fn admit(&self, ip: IpAddr) -> Result<ConnectionSlot, Refusal> {
        self.admit_client(Client::Ip(client_network(ip)))
    }

    /// A connection of local user `uid` on the sendmail socket: within the total, and within
    /// the per-client limit counted for that user alone.
    pub fn admit_local_user(&self, uid: u32) -> Result<ConnectionSlot, Refusal> {
        self.admit_client(Client::LocalUser(uid))
    }

    fn admit_client(&self, client: Client) -> Result<ConnectionSlot, Refusal> {
        let mut counts = self.lock();
        if counts.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let per_client = counts.per_ip.entry(client).or_insert(0);
        if *per_client >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *per_client += 1;
        counts.total += 1;
        self.update_stress(counts.total);
        Ok(ConnectionSlot {
            limits: self.clone(),
            client,
        })
    }

    pub fn open_connections(&self) -> usize {
        self.lock().total
    }

    /// Whether the server is near its limit (80% of `max_total` open): idle sessions then get
    /// a short timeout, as in Postfix's stress mode, so idle clients cannot hold every slot.
    pub fn under_stress(&self) -> bool {
        self.stressed(self.lock().total)
    }

    /// Changes whenever stress begins or ends.
    pub fn stress_changes(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stress.subscribe()
    }

    fn stressed(&self, total: usize) -> bool {
        total * 5 >= self.max_total * 4
    }

    fn update_stress(&self, total: usize) {
        let now = self.stressed(total);
        self.stress
            .send_if_modified(|s| std::mem::replace(s, now) != now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent even if a holder panicked: every update is one step.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.limits.lock();
        counts.total -= 1;
        self.limits.update_stress(counts.total);
        if let Some(n) = counts.per_ip.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks() {
        let net: IpNetwork = "192.0.2.0/24".parse().unwrap();
        assert!(net.contains("192.0.2.77".parse().unwrap()));
        assert!(net.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!net.contains("192.0.3.1".parse().unwrap()));
        let all: IpNetwork = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let one: IpNetwork = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNetwork>().is_err());
        assert!("nonsense".parse::<IpNetwork>().is_err());
    }

    #[test]
    fn limits_count_and_release() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = limits.admit(a).unwrap();
        let _s2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::PerIp);
        let _s3 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refusal::Total);
        drop(s1);
        assert_eq!(limits.open_connections(), 2);
        assert!(limits.admit(a).is_ok());
    }

    #[test]
    fn a_local_user_counts_alone_and_within_the_total() {
        let limits = ConnectionLimits::new(5, 2);
        let localhost: IpAddr = "127.0.0.1".parse().unwrap();
        let _n1 = limits.admit_local_user(65534).unwrap();
        let _n2 = limits.admit_local_user(65534).unwrap();
        assert_eq!(limits.admit_local_user(65534).unwrap_err(), Refusal::PerIp);
        // Another user, and 127.0.0.1's TCP clients, still have their places.
        let _r = limits.admit_local_user(0).unwrap();
        let _t1 = limits.admit(localhost).unwrap();
        let _t2 = limits.admit(localhost).unwrap();
        assert_eq!(limits.admit_local_user(0).unwrap_err(), Refusal::Total);
        drop(_n1);
        assert!(limits.admit_local_user(65534).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64_and_mapped_addresses_are_unmapped() {
        let limits = ConnectionLimits::new(10, 2);
        let _a = limits.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        let _b = limits
            .admit("2001:db8:1:2:ffff::9".parse().unwrap())
            .unwrap();
        assert_eq!(
            limits
                .admit("2001:db8:1:2::77".parse().unwrap())
                .unwrap_err(),
            Refusal::PerIp
        );
        assert!(limits.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
        let _c = limits.admit("192.0.2.9".parse().unwrap()).unwrap();
        let _d = limits.admit("::ffff:192.0.2.9".parse().unwrap()).unwrap();
        assert_eq!(
            limits.admit("192.0.2.9".parse().unwrap()).unwrap_err(),
            Refusal::PerIp
        );
        assert_eq!(
            unmapped("::ffff:127.0.0.1".parse().unwrap()),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            unmapped("::1".parse().unwrap()),
            "::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn stress_begins_at_four_fifths() {
        let limits = ConnectionLimits::new(10, 10);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let slots: Vec<_> = (0..7).map(|_| limits.admit(ip).unwrap()).collect();
        assert!(!limits.under_stress());
        let more = limits.admit(ip).unwrap();
        assert!(limits.under_stress());
        drop((slots, more));
        assert!(!limits.under_stress());
    }
}
