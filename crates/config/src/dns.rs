//! `[dns]` and `[[dnsbl]]`: the resolver, and the blocklists asked about clients.

use std::time::Duration;

use backstop_filter::dnsbl::{List, ListAction};
use backstop_types::Domain;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::Ctx;
use crate::units::Seconds;

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    /// `address:port` of each; the system's (/etc/resolv.conf) when empty.
    #[serde(default)]
    nameservers: Vec<Spanned<String>>,
    timeout: Option<Seconds>,
    attempts: Option<usize>,
}

pub(crate) fn settings(ctx: &mut Ctx<'_>, raw: RawDns) -> backstop_filter::dns::Settings {
    let mut dns = backstop_filter::dns::Settings::default();
    for n in &raw.nameservers {
        if let Some(address) = crate::socket_address(ctx, n, "127.0.0.1:53") {
            dns.nameservers.push(address);
        }
    }
    if let Some(timeout) = raw.timeout {
        dns.timeout = timeout.0.max(Duration::from_secs(1));
    }
    if let Some(attempts) = raw.attempts {
        dns.attempts = attempts.max(1);
    }
    dns
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDnsbl {
    zone: Spanned<String>,
    #[serde(default)]
    action: Action,
    #[serde(default)]
    codes: Vec<Spanned<String>>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "lowercase")]
enum Action {
    #[default]
    Reject,
    Log,
}

pub(crate) fn blocklists(ctx: &mut Ctx<'_>, raw: Vec<RawDnsbl>) -> Vec<List> {
    let mut lists = Vec::new();
    for list in raw {
        if let Err(e) = Domain::parse(list.zone.get_ref()) {
            ctx.error(
                list.zone.span(),
                "",
                format!("{:?}: {e}", list.zone.get_ref()),
            );
            continue;
        }
        let mut codes = Vec::new();
        for code in &list.codes {
            match code.get_ref().parse() {
                Ok(code) => codes.push(code),
                Err(_) => ctx.error(
                    code.span(),
                    "",
                    format!("{:?} is not an answer like 127.0.0.2", code.get_ref()),
                ),
            }
        }
        lists.push(List {
            zone: list.zone.into_inner(),
            action: match list.action {
                Action::Reject => ListAction::Reject,
                Action::Log => ListAction::Log,
            },
            codes,
        });
    }
    lists
}
