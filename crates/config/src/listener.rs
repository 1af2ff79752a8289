//! `[[listener]]`: where we listen, and in which role.

use std::net::SocketAddr;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::Ctx;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub kind: ListenerKind,
}

/// The three listener roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Port 25 style: mail for our domains from anyone; STARTTLS offered, no AUTH.
    Mx,
    /// Port 587: STARTTLS, then AUTH required before MAIL (RFC 6409).
    Submission,
    /// Port 465: implicit TLS, AUTH required (RFC 8314).
    Submissions,
}

impl ListenerKind {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Mx => "mx",
            ListenerKind::Submission => "submission",
            ListenerKind::Submissions => "submissions",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    name: Spanned<String>,
    address: Spanned<String>,
    kind: ListenerKind,
}

/// The listeners; `span` is where `[[listener]]` is written, for "none" problems.
pub(crate) fn check(
    ctx: &mut Ctx<'_>,
    raw: Option<Vec<RawListener>>,
    span: Option<Range<usize>>,
) -> Vec<ListenerConfig> {
    let raw = raw.unwrap_or_default();
    if raw.is_empty() {
        // Only when none was written: one written but wrong is reported where it is.
        if span.is_none() {
            ctx.error(0..0, "listener", "at least one [[listener]] is needed");
        }
        return Vec::new();
    }
    let mut listeners: Vec<ListenerConfig> = Vec::new();
    for l in raw {
        let Some(address) = crate::socket_address(ctx, &l.address, "127.0.0.1:25 or [::1]:25")
        else {
            continue;
        };
        let name = l.name.get_ref().clone();
        if listeners.iter().any(|o| o.name == name) {
            ctx.error(
                l.name.span(),
                "",
                format!("a listener is already named {name:?}"),
            );
            continue;
        }
        if address.port() != 0 && listeners.iter().any(|o| o.address == address) {
            ctx.error(
                l.address.span(),
                "",
                format!("another listener already uses {address}"),
            );
            continue;
        }
        listeners.push(ListenerConfig {
            name,
            address,
            kind: l.kind,
        });
    }
    listeners
}
