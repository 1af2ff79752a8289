//! DNS blocklists (RFC 5782): the client's address, reversed, under each list's zone. An
//! answer in 127.0.0.0/8 (or one of the list's configured codes) means listed. A lookup that
//! fails counts as not listed and is logged, as Postfix does: a broken list must not stop mail.

use std::net::{IpAddr, Ipv4Addr};

use mail_auth::hickory_resolver::proto::rr::Name;
use mail_auth::hickory_resolver::TokioResolver;

/// What a listing means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListAction {
    /// Refuse the client's mail: `554 5.7.1` at MAIL FROM.
    Reject,
    /// Only log the listing.
    Log,
}

/// One blocklist.
#[derive(Debug, Clone)]
pub struct List {
    pub zone: String,
    pub action: ListAction,
    /// The answers that count; empty: any address in 127.0.0.0/8.
    pub codes: Vec<Ipv4Addr>,
}

/// What the lists say about a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listing {
    Clean,
    Listed {
        zone: String,
        code: Ipv4Addr,
        action: ListAction,
    },
}

/// The lists, asked through one resolver.
pub struct Dnsbl {
    resolver: TokioResolver,
    lists: Vec<List>,
}

impl Dnsbl {
    /// The lists, asked through `resolver` (see [`crate::dns::resolver`]).
    pub fn new(resolver: TokioResolver, lists: Vec<List>) -> Dnsbl {
        Dnsbl { resolver, lists }
    }

    /// The first listing that rejects, else the first that logs, else clean. Every list is
    /// asked.
    pub async fn check(&self, ip: IpAddr) -> Listing {
        let mut found = Listing::Clean;
        for list in &self.lists {
            let name = format!("{}.{}.", reversed(ip), list.zone.trim_end_matches('.'));
            let Ok(query) = Name::from_ascii(&name) else {
                continue;
            };
            let codes: Vec<Ipv4Addr> = match self.resolver.ipv4_lookup(query).await {
                Ok(lookup) => lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        mail_auth::hickory_resolver::proto::rr::RData::A(a) => Some(a.0),
                        _ => None,
                    })
                    .collect(),
                Err(e) if e.is_no_records_found() => Vec::new(),
                Err(e) => {
                    tracing::warn!(zone = %list.zone, %ip, error = %e, "blocklist lookup failed: not listed");
                    Vec::new()
                }
            };
            let hit = codes.into_iter().find(|code| {
                if list.codes.is_empty() {
                    code.octets()[0] == 127
                } else {
                    list.codes.contains(code)
                }
            });
            if let Some(code) = hit {
                tracing::info!(zone = %list.zone, %ip, %code, action = match list.action { ListAction::Reject => "reject", ListAction::Log => "log" }, "client is on a blocklist");
                let listed = Listing::Listed {
                    zone: list.zone.clone(),
                    code,
                    action: list.action,
                };
                match (&found, list.action) {
                    (_, ListAction::Reject) => return listed,
                    (Listing::Clean, ListAction::Log) => found = listed,
                    _ => {}
                }
            }
        }
        found
    }
}

/// The address in blocklist order: `2.0.0.127` for 127.0.0.2, nibbles for IPv6.
pub fn reversed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => v6
            .octets()
            .iter()
            .rev()
            .flat_map(|byte| [byte & 0x0f, byte >> 4])
            .map(|nibble| format!("{nibble:x}"))
            .collect::<Vec<_>>()
            .join("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_reverse_as_rfc_5782_says() {
        assert_eq!(reversed("192.0.2.99".parse().unwrap()), "99.2.0.192");
        assert_eq!(
            reversed("2001:db8:1:2:3:4:567:89ab".parse().unwrap()),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2"
        );
    }
}
