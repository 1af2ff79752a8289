//! `[queue]`: retries, delay notices and how long quarantine keeps messages.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::Ctx;
use crate::units::{secs, Seconds};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConfig {
    pub retry: Retry,
    /// When to tell a sender that a message is delayed, after arrival. Only senders the
    /// bounce gate trusts ever get such a notice; empty means never.
    pub delay_warnings: Vec<Duration>,
    /// How long quarantined messages are kept before they are deleted.
    pub quarantine_retention: Duration,
}

/// When a message is tried again, and for how long at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    pub lifetime: Duration,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawQueue {
    min_backoff: Spanned<Seconds>,
    max_backoff: Spanned<Seconds>,
    lifetime: Spanned<Seconds>,
    delay_warnings: Vec<Seconds>,
    quarantine_retention: Seconds,
}

impl Default for RawQueue {
    /// Postfix's retry shape (5 minutes doubling to an hour, 5 days in all), no delay notices,
    /// and a month of quarantine.
    fn default() -> RawQueue {
        RawQueue {
            min_backoff: Spanned::new(0..0, secs(300)),
            max_backoff: Spanned::new(0..0, secs(3600)),
            lifetime: Spanned::new(0..0, secs(5 * 86_400)),
            delay_warnings: Vec::new(),
            quarantine_retention: secs(30 * 86_400),
        }
    }
}

pub(crate) fn check(ctx: &mut Ctx<'_>, raw: RawQueue) -> QueueConfig {
    let defaults = RawQueue::default();
    let mut retry = Retry {
        min_backoff: raw.min_backoff.get_ref().0,
        max_backoff: raw.max_backoff.get_ref().0,
        lifetime: raw.lifetime.get_ref().0,
    };
    if retry.min_backoff.is_zero() {
        ctx.error(
            raw.min_backoff.span(),
            "queue.min_backoff",
            "must be more than 0",
        );
        retry.min_backoff = defaults.min_backoff.get_ref().0;
    }
    if retry.lifetime.is_zero() {
        ctx.error(raw.lifetime.span(), "queue.lifetime", "must be more than 0");
        retry.lifetime = defaults.lifetime.get_ref().0;
    }
    if retry.max_backoff < retry.min_backoff {
        // One of the two may be the default: the problem is at the one the file has.
        ctx.error(
            Ctx::first_written(&[raw.max_backoff.span(), raw.min_backoff.span()]),
            "queue.max_backoff",
            format!(
                "max_backoff ({}s) must be at least min_backoff ({}s)",
                retry.max_backoff.as_secs(),
                retry.min_backoff.as_secs()
            ),
        );
        retry.max_backoff = retry.min_backoff;
    }
    QueueConfig {
        retry,
        delay_warnings: raw.delay_warnings.iter().map(|d| d.0).collect(),
        quarantine_retention: raw.quarantine_retention.0,
    }
}
