//! `[sender_checks]` (SPF, DKIM, DMARC, iprev of untrusted clients' mail) and
//! `[bounce_provenance]` (bounces of messages we never sent).

use std::time::Duration;

use backstop_filter::sender_auth::{Action, Actions};
use backstop_types::Domain;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::Ctx;
use crate::units::{secs, Seconds};

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSenderChecks {
    enabled: bool,
    dmarc_reject: CheckAction,
    dmarc_quarantine: CheckAction,
    spf_fail: CheckAction,
    dns_error: DnsErrorAction,
    iprev_fail: CheckAction,
    spf_at_mail: bool,
    trusted_arc_sealers: Vec<String>,
}

impl Default for RawSenderChecks {
    fn default() -> RawSenderChecks {
        RawSenderChecks {
            enabled: true,
            dmarc_reject: CheckAction::Reject,
            dmarc_quarantine: CheckAction::Quarantine,
            spf_fail: CheckAction::Reject,
            dns_error: DnsErrorAction::Tempfail,
            iprev_fail: CheckAction::Accept,
            spf_at_mail: false,
            trusted_arc_sealers: Vec::new(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum CheckAction {
    Reject,
    Quarantine,
    Accept,
}

impl From<CheckAction> for Action {
    fn from(a: CheckAction) -> Self {
        match a {
            CheckAction::Reject => Self::Reject,
            CheckAction::Quarantine => Self::Quarantine,
            CheckAction::Accept => Self::Accept,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum DnsErrorAction {
    Tempfail,
    Accept,
}

pub(crate) fn check(c: RawSenderChecks) -> Option<Actions> {
    c.enabled.then(|| Actions {
        dmarc_reject: c.dmarc_reject.into(),
        dmarc_quarantine: c.dmarc_quarantine.into(),
        spf_fail: c.spf_fail.into(),
        tempfail_on_dns_error: c.dns_error == DnsErrorAction::Tempfail,
        iprev_fail: c.iprev_fail.into(),
        spf_at_mail: c.spf_at_mail,
        trusted_arc_sealers: c.trusted_arc_sealers,
    })
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawBounceProvenance {
    enabled: bool,
    domains: Vec<Spanned<String>>,
    retention: Spanned<Seconds>,
}

impl Default for RawBounceProvenance {
    fn default() -> RawBounceProvenance {
        RawBounceProvenance {
            enabled: true,
            domains: Vec::new(),
            retention: Spanned::new(0..0, secs(30 * 86_400)),
        }
    }
}

/// `[bounce_provenance]` as checked.
pub(crate) struct BounceProvenance {
    /// Off where BATV already checks every bounce.
    pub enabled: bool,
    /// Empty: the local domains.
    pub domains: Vec<Domain>,
    /// How long a sent Message-ID is remembered.
    pub retention: Duration,
}

/// Whether to check, for which domains, and how long sent Message-IDs are kept.
pub(crate) fn bounce_provenance(
    ctx: &mut Ctx<'_>,
    raw: RawBounceProvenance,
    batv_checks_bounces: bool,
) -> BounceProvenance {
    let domains = crate::domains(ctx, &raw.domains);
    let mut retention = raw.retention.get_ref().0;
    if retention.is_zero() {
        ctx.error(
            raw.retention.span(),
            "bounce_provenance.retention",
            "must be more than 0 (a bounce comes days after the message it returns)",
        );
        retention = RawBounceProvenance::default().retention.get_ref().0;
    }
    BounceProvenance {
        enabled: raw.enabled && !batv_checks_bounces,
        domains,
        retention,
    }
}
