//! `[delivery]`: where local mail goes, and how delivery connects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::Ctx;
use crate::units::{secs, Seconds};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Where local domains' mail is delivered without a route: Maildirs under this directory.
    pub maildir: PathBuf,
    /// Accept and queue, but deliver nothing (maintenance, like Postfix's defer_transports).
    pub paused: bool,
    /// The port of MX hosts: 25, but in tests.
    pub mx_port: u16,
    pub connect_timeout: Duration,
    /// Connections delivery opens at once, in all and to one destination.
    pub max_connections: usize,
    pub max_connections_per_destination: usize,
    /// Where a destination's concurrency window starts.
    pub initial_window: usize,
    /// Connection-level failures in a row that mark a destination down, and for how long.
    pub dead_after: u32,
    pub dead_backoff: Duration,
    /// Messages leased and not yet recorded, at most.
    pub max_in_flight: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawDelivery {
    maildir: PathBuf,
    paused: bool,
    mx_port: u16,
    connect_timeout: Seconds,
    max_connections: Option<Spanned<usize>>,
    max_connections_per_destination: Option<Spanned<usize>>,
    initial_concurrency: Option<Spanned<usize>>,
    dead_after: Option<Spanned<usize>>,
    dead_backoff: Seconds,
    max_in_flight: Option<Spanned<usize>>,
}

impl Default for RawDelivery {
    fn default() -> RawDelivery {
        RawDelivery {
            maildir: PathBuf::from("maildir"),
            paused: false,
            mx_port: 25,
            // Postfix's smtp_connect_timeout.
            connect_timeout: secs(30),
            max_connections: None,
            max_connections_per_destination: None,
            initial_concurrency: None,
            dead_after: None,
            // Postfix's minimal_backoff_time.
            dead_backoff: secs(300),
            max_in_flight: None,
        }
    }
}

/// `maildir` is relative to `data_dir`.
pub(crate) fn check(ctx: &mut Ctx<'_>, raw: RawDelivery, data_dir: &Path) -> DeliveryConfig {
    use crate::at_least_one;
    DeliveryConfig {
        maildir: data_dir.join(&raw.maildir),
        paused: raw.paused,
        mx_port: raw.mx_port,
        connect_timeout: raw.connect_timeout.0,
        // Postfix's default_process_limit and default_destination_concurrency_limit.
        max_connections: at_least_one(ctx, &raw.max_connections, 100),
        max_connections_per_destination: at_least_one(
            ctx,
            &raw.max_connections_per_destination,
            20,
        ),
        // Postfix's initial_destination_concurrency.
        initial_window: at_least_one(ctx, &raw.initial_concurrency, 5),
        dead_after: at_least_one(ctx, &raw.dead_after, 3)
            .try_into()
            .unwrap_or(u32::MAX),
        dead_backoff: raw.dead_backoff.0,
        max_in_flight: at_least_one(ctx, &raw.max_in_flight, 10_000),
    }
}
