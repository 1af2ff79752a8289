//! `[recipients]`: the recipient table, and how callahead asks.

use std::path::PathBuf;
use std::time::Duration;

use backstop_types::Address;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Ctx, Located};
use crate::units::{secs, Seconds};

/// Callahead's probe sender and how long its answers count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callahead {
    /// The MAIL FROM of probes; never `<>`.
    pub sender: Address,
    pub ttl: CallaheadTtl,
}

/// How long a callahead answer is remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallaheadTtl {
    /// The recipient exists.
    pub positive: Duration,
    /// The recipient is unknown there.
    pub negative: Duration,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawRecipients {
    table: Option<Spanned<PathBuf>>,
    /// The MAIL FROM of callahead probes; postmaster@<hostname> when absent. Never <>.
    callahead_sender: Option<Spanned<String>>,
    callahead_positive_ttl: Seconds,
    callahead_negative_ttl: Seconds,
}

impl Default for RawRecipients {
    fn default() -> RawRecipients {
        RawRecipients {
            table: None,
            callahead_sender: None,
            callahead_positive_ttl: secs(3600),
            callahead_negative_ttl: secs(600),
        }
    }
}

pub(crate) fn check(
    ctx: &mut Ctx<'_>,
    raw: RawRecipients,
    hostname: &str,
) -> (Option<Located<PathBuf>>, Callahead) {
    let postmaster = || {
        Address::parse(&format!("postmaster@{hostname}"))
            .or_else(|_| Address::parse("postmaster@localhost"))
            .expect("postmaster@localhost is an address")
    };
    let sender = match &raw.callahead_sender {
        Some(s) => match Address::parse(s.get_ref()) {
            Ok(address) => address,
            Err(e) => {
                ctx.error(s.span(), "", format!("{:?}: {e}", s.get_ref()));
                postmaster()
            }
        },
        None => postmaster(),
    };
    (
        raw.table.as_ref().map(|t| crate::path(ctx, t)),
        Callahead {
            sender,
            ttl: CallaheadTtl {
                positive: raw.callahead_positive_ttl.0,
                negative: raw.callahead_negative_ttl.0,
            },
        },
    )
}
