//! Greylisting: a first delivery attempt for an unknown (client network, sender, recipient)
//! triplet is deferred with 451 4.7.1; a real MTA retries after the delay and passes, most
//! spam software never does. Once a client network has retried successfully it passes at once
//! for a while (auto-pass), so regular senders are delayed only once.
//!
//! State lives in the site's [`State`] (this node's queue, or Redis for several nodes), so a
//! sender retrying through another MX is not greylisted again. Time is passed in.

use std::net::IpAddr;
use std::time::Duration;

use backstop_types::{Address, ReversePath, UnixTime};

use backstop_state::{Key, State, StateError};

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
pub async fn check(
    store: &dyn State,
    policy: &GreylistPolicy,
    client: IpAddr,
    sender: &ReversePath,
    recipient: &Address,
    now: UnixTime,
) -> GreyVerdict {
    decide(store, policy, client, sender, recipient, now)
        .await
        .unwrap_or_else(|e| GreyVerdict::Unavailable(e.to_string()))
}

async fn decide(
    store: &dyn State,
    policy: &GreylistPolicy,
    client: IpAddr,
    sender: &ReversePath,
    recipient: &Address,
    now: UnixTime,
) -> Result<GreyVerdict, StateError> {
    let network = network(client);
    let pass = Key::GreyPass(network.clone());
    if store.get(&pass, now).await?.is_some() {
        return Ok(GreyVerdict::Pass);
    }
    let sender = match sender.address() {
        Some(a) => a.to_string().to_lowercase(),
        None => String::new(),
    };
    let triplet = Key::GreyTriplet(format!(
        "{network}/{sender}/{}",
        recipient.to_string().to_lowercase()
    ));
    let first_seen = store
        .get(&triplet, now)
        .await?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes);
    match first_seen {
        Some(first) if now.0 >= first.saturating_add(policy.delay.as_secs()) => {
            // A real retry: this client network is a mail server that retries.
            let until = UnixTime(now.0.saturating_add(policy.auto_pass.as_secs()));
            store.put(&pass, b"1", until, now).await?;
            Ok(GreyVerdict::Pass)
        }
        Some(first) => Ok(GreyVerdict::Defer {
            retry_after: first + policy.delay.as_secs() - now.0,
        }),
        None => {
            let forget = UnixTime(now.0.saturating_add(policy.retry_window.as_secs()));
            store
                .put(&triplet, &now.0.to_be_bytes(), forget, now)
                .await?;
            Ok(GreyVerdict::Defer {
                retry_after: policy.delay.as_secs(),
            })
        }
    }
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
