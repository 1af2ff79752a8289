//! `[[route]]`: where mail for some domains (or for all) goes, and how.

use std::path::PathBuf;

use backstop_smtp_client::{Endpoint, NextHop};
use backstop_types::Domain;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Ctx, Located};
use crate::smtp::Smtp;

/// A route: recipients in `domains` (or in any domain) go to a fixed next hop or by MX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub domains: Vec<Domain>,
    pub any_domain: bool,
    /// The fixed next hop; `None`: the recipient domain's MX hosts.
    pub relay: Option<NextHop>,
    /// LMTP instead of SMTP.
    pub lmtp: bool,
    pub tls: RouteTls,
    pub auth: Option<RouteAuth>,
    /// Recipients in this route's domains are verified at RCPT by asking its relay.
    pub callahead: bool,
    /// Transactions for this route's domains are passed through to its relay in-session:
    /// its replies are the client's, nothing is queued.
    pub proxy: bool,
}

/// TLS toward the next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTls {
    /// Never (a local LMTP socket, say).
    Off,
    /// When offered, unverified (opportunistic, as RFC 7435).
    May,
    /// Always, with the certificate verified against these trust anchors (PEM).
    Require { ca_file: Located<PathBuf> },
}

/// SMTP AUTH at a relay (a smarthost).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAuth {
    pub user: String,
    pub password_file: Located<PathBuf>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    /// Domains, or "*" for every domain no earlier route and no local domain covers.
    domains: Spanned<Vec<Spanned<String>>>,
    /// The next hop, `address:port` or `unix:/path`; or else `mx = true`.
    relay: Option<Spanned<String>>,
    /// Deliver to the recipient domain's MX hosts.
    mx: Option<Spanned<bool>>,
    /// The next hop's name (for TLS); the address when absent.
    host: Option<String>,
    #[serde(default)]
    protocol: Protocol,
    tls: Option<Spanned<Tls>>,
    /// Trust anchors for `tls = "require"`, PEM; the system's bundle when absent.
    tls_ca_file: Option<Spanned<PathBuf>>,
    callahead: Option<Spanned<bool>>,
    proxy: Option<Spanned<bool>>,
    auth_user: Option<Spanned<String>>,
    auth_password_file: Option<Spanned<PathBuf>>,
}

#[derive(Serialize, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Protocol {
    #[default]
    Smtp,
    Lmtp,
}

#[derive(Serialize, Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Tls {
    None,
    #[default]
    May,
    Require,
}

/// Debian's bundle of the system's trusted CAs.
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub(crate) fn check(ctx: &mut Ctx<'_>, raw: Vec<RawRoute>, smtp: &Smtp) -> Vec<RouteConfig> {
    raw.into_iter()
        .filter_map(|route| check_route(ctx, route, smtp))
        .collect()
}

fn check_route(ctx: &mut Ctx<'_>, route: RawRoute, smtp: &Smtp) -> Option<RouteConfig> {
    let errors = ctx.errors.len();
    let domains_span = route.domains.span();
    let mut domains = Vec::new();
    let mut any_domain = false;
    for d in route.domains.get_ref() {
        if d.get_ref() == "*" {
            any_domain = true;
        } else {
            domains.extend(crate::domains(ctx, std::slice::from_ref(d)));
        }
    }
    let lmtp = route.protocol == Protocol::Lmtp;
    let mx = route.mx.as_ref().is_some_and(|m| *m.get_ref());
    let relay = match (&route.relay, &route.mx) {
        (Some(relay), Some(m)) if *m.get_ref() => {
            ctx.error(relay.span(), "", "a route has relay or mx = true, not both");
            None
        }
        (Some(relay), _) => next_hop(ctx, relay, route.host.as_deref()),
        (None, Some(m)) if mx && lmtp => {
            ctx.error(
                m.span(),
                "",
                "LMTP goes to a fixed next hop (relay), not to MX hosts",
            );
            None
        }
        (None, _) if mx => None,
        (None, _) => {
            ctx.error(
                domains_span.clone(),
                "route.domains",
                "a route needs relay = \"host:port\" or mx = true",
            );
            None
        }
    };
    let tls_setting = route.tls.as_ref().map_or(Tls::May, |t| *t.get_ref());
    let tls = match tls_setting {
        Tls::None => RouteTls::Off,
        Tls::May => RouteTls::May,
        Tls::Require => RouteTls::Require {
            ca_file: match &route.tls_ca_file {
                Some(f) => crate::path(ctx, f),
                None => ctx.located(
                    PathBuf::from(SYSTEM_CA_FILE),
                    route.tls.as_ref().map_or(0..0, Spanned::span),
                    "route.tls",
                ),
            },
        },
    };
    if let (Some(f), false) = (&route.tls_ca_file, tls_setting == Tls::Require) {
        ctx.error(f.span(), "", "tls_ca_file goes with tls = \"require\"");
    }
    let auth = match (&route.auth_user, &route.auth_password_file) {
        (None, None) => None,
        (Some(user), None) => {
            ctx.error(user.span(), "", "auth_user needs auth_password_file");
            None
        }
        (None, Some(file)) => {
            ctx.error(file.span(), "", "auth_password_file goes with auth_user");
            None
        }
        (Some(user), Some(file)) => {
            if route.relay.is_none() {
                ctx.error(user.span(), "", "AUTH is for a relay, not for MX hosts");
            } else if tls_setting == Tls::None {
                ctx.error(
                    user.span(),
                    "",
                    "AUTH needs TLS: credentials are never sent in clear",
                );
            }
            Some(RouteAuth {
                user: user.get_ref().clone(),
                password_file: crate::path(ctx, file),
            })
        }
    };
    let callahead = route.callahead.as_ref().is_some_and(|c| *c.get_ref());
    let proxy = route.proxy.as_ref().is_some_and(|p| *p.get_ref());
    let callahead_span = route
        .callahead
        .as_ref()
        .map_or(domains_span.clone(), Spanned::span);
    let proxy_span = route
        .proxy
        .as_ref()
        .map_or(domains_span.clone(), Spanned::span);
    if callahead {
        if route.relay.is_none() {
            ctx.error(
                callahead_span.clone(),
                "route.callahead",
                "callahead asks a fixed next hop (relay), not MX hosts",
            );
        }
        if proxy {
            ctx.error(
                callahead_span.clone(),
                "route.callahead",
                "callahead and proxy both ask the relay at RCPT; proxy already passes its \
                 answer on: choose one",
            );
        }
        // Callahead asks about local domains (their mailbox server over LMTP) and relay
        // domains ("*": those no earlier route names); any other domain is mail we send,
        // whose recipients are not ours to check, so it would never be asked.
        let ours = |d: &Domain| smtp.local_domains.contains(d) || smtp.relay_domains.contains(d);
        if let Some(other) = domains.iter().find(|d| !ours(d)) {
            ctx.error(
                callahead_span,
                "route.callahead",
                format!(
                    "callahead checks recipients of local or relay domains (smtp.local_domains, \
                     smtp.relay_domains); {other} is neither"
                ),
            );
        }
    }
    if proxy && (route.relay.is_none() || lmtp || any_domain) {
        ctx.error(
            proxy_span,
            "route.proxy",
            "proxy passes named domains through to a fixed SMTP next hop (relay, not mx, not \
             LMTP, not \"*\")",
        );
    }
    if ctx.errors.len() > errors {
        return None;
    }
    Some(RouteConfig {
        domains,
        any_domain,
        relay,
        lmtp,
        tls,
        auth,
        callahead,
        proxy,
    })
}

fn next_hop(ctx: &mut Ctx<'_>, relay: &Spanned<String>, host: Option<&str>) -> Option<NextHop> {
    let text = relay.get_ref();
    // A relay is an address, never a name to look up (that would be an MX route).
    let endpoint = match Endpoint::parse(text) {
        Ok(Endpoint::Tcp(_)) if text.parse::<std::net::SocketAddr>().is_err() => {
            ctx.error(
                relay.span(),
                "",
                format!("{text:?} is not an address like 192.0.2.25:25 or unix:/run/lmtp"),
            );
            return None;
        }
        Ok(endpoint) => endpoint,
        Err(_) if !text.starts_with("unix:") => {
            ctx.error(
                relay.span(),
                "",
                format!("{text:?} is not an address like 192.0.2.25:25 or unix:/run/lmtp"),
            );
            return None;
        }
        Err(why) => {
            ctx.error(relay.span(), "", why);
            return None;
        }
    };
    let host = host.map(str::to_owned).unwrap_or_else(|| {
        endpoint
            .socket_addr()
            .map_or_else(|| "localhost".to_owned(), |a| a.ip().to_string())
    });
    Some(NextHop { endpoint, host })
}
