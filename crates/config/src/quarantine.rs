//! `[quarantine]`: retention per reason kind, the recipients' digests, the release pages and
//! the keys that sign release links.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use backstop_types::quarantine::ReasonKind;
use backstop_types::Address;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::batv::BatvKeys;
use crate::error::Ctx;
use crate::units::Seconds;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// How long each kind is kept before it is deleted.
    pub retention: Vec<(ReasonKind, Duration)>,
    /// How often each recipient with new items gets a digest; `None`: never.
    pub digest_every: Option<Duration>,
    /// The digest's From (and DKIM signing domain); `postmaster@` the first local domain, or
    /// the host name's, when not given.
    pub digest_from: Option<Address>,
    /// Where the release pages listen (loopback or a private address, behind the site's
    /// reverse proxy); `None`: no pages, digests list items without links.
    pub web: Option<SocketAddr>,
    /// The public base of release links as users' browsers reach it (`https://...`).
    pub url: Option<String>,
    /// How long a release link is valid, at most the item's retention.
    pub link_lifetime: Duration,
    /// The keys that sign release links (numbered, rotated like BATV's).
    pub keys: BatvKeys,
}

impl Quarantine {
    /// The retention of `kind`.
    pub fn retention_of(&self, kind: ReasonKind) -> Duration {
        self.retention
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(Duration::from_secs(30 * 86_400), |(_, d)| *d)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawQuarantine {
    content_retention: Option<Seconds>,
    dmarc_retention: Option<Seconds>,
    undeliverable_retention: Option<Seconds>,
    hold_retention: Option<Seconds>,
    /// `"24h"` (the default), any duration, or `"off"`.
    digest: Spanned<String>,
    digest_from: Option<Spanned<String>>,
    web: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    link_lifetime: Spanned<Seconds>,
    sign_with: Spanned<u8>,
    key: Vec<crate::batv::RawBatvKey>,
}

impl Default for RawQuarantine {
    fn default() -> RawQuarantine {
        RawQuarantine {
            content_retention: None,
            dmarc_retention: None,
            undeliverable_retention: None,
            hold_retention: None,
            digest: Spanned::new(0..0, "24h".to_owned()),
            digest_from: None,
            web: None,
            url: None,
            link_lifetime: Spanned::new(0..0, crate::units::secs(14 * 86_400)),
            sign_with: Spanned::new(0..0, 0),
            key: Vec::new(),
        }
    }
}

/// `default_retention` is `[queue] quarantine_retention`, which every kind keeps unless it
/// says otherwise.
pub(crate) fn check(
    ctx: &mut Ctx<'_>,
    raw: RawQuarantine,
    default_retention: Duration,
    data_dir: &Path,
) -> Quarantine {
    let retention = [
        (ReasonKind::Content, raw.content_retention),
        (ReasonKind::Dmarc, raw.dmarc_retention),
        (ReasonKind::Undeliverable, raw.undeliverable_retention),
        (ReasonKind::Hold, raw.hold_retention),
    ]
    .into_iter()
    .map(|(kind, given)| (kind, given.map_or(default_retention, |s| s.0)))
    .collect();
    let digest_every = match raw.digest.get_ref().as_str() {
        "off" | "never" => None,
        text => match crate::units::parse_duration(text) {
            Ok(d) if d >= Duration::from_secs(60) => Some(d),
            _ => {
                ctx.error(
                    raw.digest.span(),
                    "quarantine.digest",
                    format!(
                        "{text:?} is neither \"off\" nor a duration of at least a minute (\"24h\")"
                    ),
                );
                None
            }
        },
    };
    let digest_from = raw
        .digest_from
        .and_then(|f| match Address::parse(f.get_ref()) {
            Ok(a) => Some(a),
            Err(e) => {
                ctx.error(f.span(), "quarantine.digest_from", format!("{e}"));
                None
            }
        });
    let web = raw
        .web
        .as_ref()
        .and_then(|w| crate::socket_address(ctx, w, "127.0.0.1:8026"));
    let url = raw.url.and_then(|u| {
        let text = u.get_ref().trim_end_matches('/').to_owned();
        let valid = (text.starts_with("https://") || text.starts_with("http://"))
            && !text
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || "\"'<>".contains(c));
        if valid {
            Some(text)
        } else {
            ctx.error(
                u.span(),
                "quarantine.url",
                format!(
                    "{:?} is not an http(s) URL like https://quarantine.example.org",
                    u.get_ref()
                ),
            );
            None
        }
    });
    let link_lifetime = raw.link_lifetime.get_ref().0;
    if link_lifetime < Duration::from_secs(3600) {
        ctx.error(
            raw.link_lifetime.span(),
            "quarantine.link_lifetime",
            "must be at least an hour",
        );
    }
    let keys = if raw.key.is_empty() {
        BatvKeys::Generated {
            file: data_dir.join("quarantine").join("0.key"),
        }
    } else {
        crate::batv::numbered_keys(ctx, &raw.key, &raw.sign_with, "quarantine")
    };
    Quarantine {
        retention,
        digest_every,
        digest_from,
        web,
        url,
        link_lifetime,
        keys,
    }
}
