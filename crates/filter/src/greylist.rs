//! Greylisting: a first delivery attempt for an unknown (client network, sender, recipient)
//! triplet is deferred with 451 4.7.1; a real MTA retries after the delay and passes, most
//! spam software never does. Once a client network has retried successfully it passes at once
//! for a while (auto-pass), so regular senders are delayed only once.
//!
//! State lives behind [`GreyStore`] (the queue's key-value area today; a shared store for
//! several nodes later). Time is passed in.

use std::net::IpAddr;
use std::time::Duration;

use backstop_types::{Address, ReversePath, UnixTime};

use crate::error::StoreError;

/// Where greylisting state is kept. Values expire on their own.
pub trait GreyStore: Send + Sync {
    fn get(&self, key: &[u8], now: UnixTime) -> Result<Option<Vec<u8>>, StoreError>;
    fn put(&self, key: &[u8], value: &[u8], expires: UnixTime) -> Result<(), StoreError>;
}

/// The rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GreylistPolicy {
    /// A retry earlier than this after the first attempt is deferred again.
    pub delay: Duration,
    /// A first attempt not retried within this is forgotten.
    pub retry_window: Duration,
    /// How long a client network passes at once after a successful retry.
    pub auto_pass: Duration,
}

/// What greylisting says about a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GreyVerdict {
    Pass,
    /// Not yet: try again in this many seconds (at least).
    Defer {
        retry_after: u64,
    },
    /// The store could not answer.
    Unavailable(String),
}

/// Decides one triplet and records what it learns. A store that fails makes the verdict
/// [`GreyVerdict::Unavailable`], never a pass.
pub fn check(
    store: &dyn GreyStore,
    policy: &GreylistPolicy,
    client: IpAddr,
    sender: &ReversePath,
    recipient: &Address,
    now: UnixTime,
) -> GreyVerdict {
    let decide = || -> Result<GreyVerdict, StoreError> {
        let network = network(client);
        let pass_key = format!("grey:pass:{network}");
        if store.get(pass_key.as_bytes(), now)?.is_some() {
            return Ok(GreyVerdict::Pass);
        }
        let sender = match sender.address() {
            Some(a) => a.to_string().to_lowercase(),
            None => String::new(),
        };
        let triplet = format!(
            "grey:triplet:{network}/{sender}/{}",
            recipient.to_string().to_lowercase()
        );
        let first_seen = store
            .get(triplet.as_bytes(), now)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes);
        match first_seen {
            Some(first) if now.0 >= first + policy.delay.as_secs() => {
                // A real retry: this client network is a mail server that retries.
                let until = UnixTime(now.0 + policy.auto_pass.as_secs());
                store.put(pass_key.as_bytes(), b"1", until)?;
                Ok(GreyVerdict::Pass)
            }
            Some(first) => Ok(GreyVerdict::Defer {
                retry_after: first + policy.delay.as_secs() - now.0,
            }),
            None => {
                let forget = UnixTime(now.0 + policy.retry_window.as_secs());
                store.put(triplet.as_bytes(), &now.0.to_be_bytes(), forget)?;
                Ok(GreyVerdict::Defer {
                    retry_after: policy.delay.as_secs(),
                })
            }
        }
    };
    decide().unwrap_or_else(|e| GreyVerdict::Unavailable(e.0))
}

/// The client's network: IPv4 /24, IPv6 /64 (big senders retry from a neighbouring address).
fn network(ip: IpAddr) -> String {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests;
