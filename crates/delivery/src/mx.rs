//! Finding where a domain's mail goes: MX records (RFC 5321 5.1), through hickory-resolver
//! (the version mail-auth re-exports, so SPF and DKIM lookups share it later).
//!
//! - MX hosts in preference order, in random order among equal preferences;
//! - no MX record: the domain itself is the host (the implicit MX);
//! - a null MX (`MX 0 .`, RFC 7505): the domain takes no mail, which fails at once;
//! - a domain that does not exist fails at once; any other DNS failure is temporary;
//! - each host's IPv4 and IPv6 addresses.
//!
//! Lookups are asynchronous, on the runtime the delivery workers run on.

use std::net::IpAddr;

use backstop_types::Domain;
use mail_auth::hickory_resolver::net::NetError;
use mail_auth::hickory_resolver::proto::rr::{Name, RData};
use mail_auth::hickory_resolver::TokioResolver;

/// Why a domain has no host to try now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unroutable {
    /// The domain publishes a null MX: it accepts no mail.
    NullMx,
    /// The domain does not exist (NXDOMAIN), or has neither MX nor address records.
    NoSuchDomain(String),
    /// The lookup failed for now (timeout, SERVFAIL, no nameserver answered).
    Temporary(String),
}

/// A DNS resolver for delivery.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// Lookups through `inner` (see `backstop_filter::dns::resolver`).
    pub fn new(inner: TokioResolver) -> Resolver {
        Resolver { inner }
    }

    /// The hosts to try for `domain`, best first.
    pub async fn mx_hosts(&self, domain: &Domain) -> Result<Vec<String>, Unroutable> {
        let name = fqdn(domain.as_str())?;
        match self.inner.mx_lookup(name).await {
            Ok(lookup) => {
                let records = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                order(records, domain, &mut |n| fastrand::usize(..n))
            }
            Err(e) if e.is_nx_domain() => Err(Unroutable::NoSuchDomain(format!(
                "{domain}: the domain does not exist"
            ))),
            // No MX record: the domain itself is the host (RFC 5321 5.1).
            Err(e) if e.is_no_records_found() => Ok(vec![domain.as_str().to_owned()]),
            Err(e) => Err(temporary(domain.as_str(), "MX", &e)),
        }
    }

    /// The addresses of `host`, IPv4 first.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, Unroutable> {
        if let Some(literal) = address_literal(host) {
            return Ok(vec![literal]);
        }
        let name = fqdn(host)?;
        match self.inner.lookup_ip(name).await {
            Ok(lookup) => {
                let mut ips: Vec<IpAddr> = lookup.iter().collect();
                ips.sort_by_key(IpAddr::is_ipv6);
                Ok(ips)
            }
            Err(e) if e.is_nx_domain() || e.is_no_records_found() => Err(Unroutable::NoSuchDomain(
                format!("{host}: no address records"),
            )),
            Err(e) => Err(temporary(host, "A/AAAA", &e)),
        }
    }
}

/// The name as a fully qualified DNS name (IDNA-encoded when it is not ASCII).
fn fqdn(name: &str) -> Result<Name, Unroutable> {
    let mut name = Name::from_utf8(name)
        .map_err(|e| Unroutable::NoSuchDomain(format!("{name}: not a DNS name: {e}")))?;
    name.set_fqdn(true);
    Ok(name)
}

fn temporary(name: &str, kind: &str, e: &NetError) -> Unroutable {
    Unroutable::Temporary(format!("{kind} lookup for {name} failed: {e}"))
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]`: a domain that is an address.
pub fn address_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
        .unwrap_or(inner);
    inner.parse().ok()
}

/// The MX hosts in the order to try them: by preference, equal preferences shuffled with
/// `pick` (`pick(n)` returns a number below `n`). A null MX alone means no mail at all; next
/// to other records it is ignored.
fn order(
    mut records: Vec<(u16, String)>,
    domain: &Domain,
    pick: &mut dyn FnMut(usize) -> usize,
) -> Result<Vec<String>, Unroutable> {
    let is_null = |exchange: &str| exchange == "." || exchange.is_empty();
    if !records.is_empty() && records.iter().all(|(_, e)| is_null(e)) {
        return Err(Unroutable::NullMx);
    }
    records.retain(|(_, e)| !is_null(e));
    if records.is_empty() {
        return Ok(vec![domain.as_str().to_owned()]);
    }
    records.sort_by_key(|(preference, _)| *preference);
    let mut hosts = Vec::with_capacity(records.len());
    let mut start = 0;
    while start < records.len() {
        let end = start
            + records[start..]
                .iter()
                .take_while(|(p, _)| *p == records[start].0)
                .count();
        // Fisher-Yates over the group of equal preference.
        let group = &mut records[start..end];
        for i in (1..group.len()).rev() {
            group.swap(i, pick(i + 1));
        }
        hosts.extend(
            group
                .iter()
                .map(|(_, e)| e.trim_end_matches('.').to_ascii_lowercase()),
        );
        start = end;
    }
    hosts.dedup();
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain() -> Domain {
        Domain::parse("example.net").unwrap()
    }

    fn records(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, e)| (*p, (*e).to_owned())).collect()
    }

    #[test]
    fn preference_order_with_equals_shuffled() {
        let list = records(&[
            (20, "b.example.net."),
            (10, "A.example.net."),
            (20, "c.example.net."),
        ]);
        // pick(n) = 0 always: the group [b, c] becomes [c, b].
        let hosts = order(list.clone(), &domain(), &mut |_| 0).unwrap();
        assert_eq!(hosts, ["a.example.net", "c.example.net", "b.example.net"]);
        // pick(n) = n-1: no swap.
        let hosts = order(list, &domain(), &mut |n| n - 1).unwrap();
        assert_eq!(hosts, ["a.example.net", "b.example.net", "c.example.net"]);
    }

    #[test]
    fn both_orders_of_equals_happen() {
        let list = records(&[(10, "a."), (10, "b.")]);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(order(list.clone(), &domain(), &mut |n| fastrand::usize(..n)).unwrap());
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    #[test]
    fn null_mx() {
        assert_eq!(
            order(records(&[(0, ".")]), &domain(), &mut |_| 0),
            Err(Unroutable::NullMx)
        );
        // Next to a real record, it is ignored.
        assert_eq!(
            order(
                records(&[(0, "."), (10, "mx.example.net.")]),
                &domain(),
                &mut |_| 0
            )
            .unwrap(),
            ["mx.example.net"]
        );
    }

    #[test]
    fn address_literals() {
        assert_eq!(address_literal("[192.0.2.1]"), "192.0.2.1".parse().ok());
        assert_eq!(
            address_literal("[IPv6:2001:db8::1]"),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(address_literal("example.net"), None);
    }
}
