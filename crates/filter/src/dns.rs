//! The DNS resolver every part that looks things up shares (MX for delivery; SPF, DKIM, DMARC,
//! iprev and blocklists here): one resolver, so one cache, asking the configured nameservers
//! or the system's `/etc/resolv.conf`.

use crate::error::ResolverError;
use std::net::SocketAddr;
use std::time::Duration;

use mail_auth::hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider;
pub use mail_auth::hickory_resolver::TokioResolver;

/// Whom to ask and how long to wait.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `address:port` of each; the system's (`/etc/resolv.conf`) when empty.
    pub nameservers: Vec<SocketAddr>,
    /// How long one query waits for an answer (resolv.conf's `timeout`).
    pub timeout: Duration,
    /// How many times a query is sent before it counts as failed (resolv.conf's `attempts`).
    pub attempts: usize,
}

impl Default for Settings {
    /// The resolver library's defaults, as resolv.conf's: 5 s, 2 attempts.
    fn default() -> Settings {
        Settings {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// A resolver asking the configured nameservers (UDP, and TCP for long answers), or the
/// system's when there are none. Names are looked up as given (no search domains), and both
/// IPv4 and IPv6 addresses are asked for. Clones share the connections and the cache.
pub fn resolver(settings: &Settings) -> Result<TokioResolver, ResolverError> {
    let (config, mut options) = resolver_config(&settings.nameservers).map_err(ResolverError)?;
    options.timeout = settings.timeout;
    options.attempts = settings.attempts;
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(|e| ResolverError(e.to_string()))
}

fn resolver_config(nameservers: &[SocketAddr]) -> Result<(ResolverConfig, ResolverOpts), String> {
    let (config, mut options) = if nameservers.is_empty() {
        mail_auth::hickory_resolver::system_conf::read_system_conf()
            .map_err(|e| format!("reading the system's resolver configuration: {e}"))?
    } else {
        let servers = nameservers
            .iter()
            .map(|address| {
                let mut server = NameServerConfig::udp_and_tcp(address.ip());
                for connection in &mut server.connections {
                    connection.port = address.port();
                }
                server
            })
            .collect();
        (
            ResolverConfig::from_name_servers(servers),
            ResolverOpts::default(),
        )
    };
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.ndots = 0;
    Ok((config, options))
}
