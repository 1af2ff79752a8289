//! The DNS resolver configuration shared by every part that looks things up (MX for delivery,
//! SPF/DKIM/DMARC here): the configured nameservers, or the system's `/etc/resolv.conf`.

use std::net::SocketAddr;

use mail_auth::hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};

/// The resolver configuration for `nameservers` (UDP, and TCP for long answers); the system's
/// when the list is empty. Names are looked up as given (no search domains), and both IPv4 and
/// IPv6 addresses are asked for.
pub fn resolver_config(
    nameservers: &[SocketAddr],
) -> Result<(ResolverConfig, ResolverOpts), String> {
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
