//! `[greylist]` and `[rate_limits]`: what slows untrusted clients down.

use backstop_filter::greylist::GreylistPolicy;
use backstop_filter::rate::Limit;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::Ctx;
use crate::units::{secs, Seconds};

pub use backstop_filter::rate::RateLimits;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawGreylist {
    enabled: bool,
    delay: Spanned<Seconds>,
    retry_window: Spanned<Seconds>,
    auto_pass: Seconds,
}

impl Default for RawGreylist {
    /// Off; when on, postgrey's long-standing values: 5 minutes, 2 days, 35 days.
    fn default() -> RawGreylist {
        RawGreylist {
            enabled: false,
            delay: Spanned::new(0..0, secs(300)),
            retry_window: Spanned::new(0..0, secs(2 * 86_400)),
            auto_pass: secs(35 * 86_400),
        }
    }
}

pub(crate) fn greylist(ctx: &mut Ctx<'_>, g: RawGreylist) -> Option<GreylistPolicy> {
    if !g.enabled {
        return None;
    }
    let retry_window = g.retry_window.get_ref().0;
    let delay = g.delay.get_ref().0;
    if retry_window <= delay {
        // One of the two may be the default: the problem is at the one the file has.
        ctx.error(
            Ctx::first_written(&[g.retry_window.span(), g.delay.span()]),
            "greylist.retry_window",
            format!(
                "retry_window ({}s) must be longer than delay ({}s)",
                retry_window.as_secs(),
                delay.as_secs()
            ),
        );
        return None;
    }
    Some(GreylistPolicy {
        delay,
        retry_window,
        auto_pass: g.auto_pass.0,
    })
}

#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimits {
    client_connections: Option<Spanned<String>>,
    client_messages: Option<Spanned<String>>,
    client_recipients: Option<Spanned<String>>,
    user_messages: Option<Spanned<String>>,
    user_recipients: Option<Spanned<String>>,
}

pub(crate) fn rate_limits(ctx: &mut Ctx<'_>, r: RawRateLimits) -> RateLimits {
    let mut limit = |raw: &Option<Spanned<String>>| match raw {
        None => None,
        Some(text) => match Limit::parse(text.get_ref()) {
            Ok(limit) => Some(limit),
            Err(e) => {
                ctx.error(text.span(), "", e.to_string());
                None
            }
        },
    };
    RateLimits {
        client_connections: limit(&r.client_connections),
        client_messages: limit(&r.client_messages),
        client_recipients: limit(&r.client_recipients),
        user_messages: limit(&r.user_messages),
        user_recipients: limit(&r.user_recipients),
    }
}
