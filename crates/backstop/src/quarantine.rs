//! The quarantine as its people see it: the recipients' digests ([`digest`]), the release
//! pages their links open ([`web`]), and what both share ([`Runtime`]): the settings, the keys
//! that sign release links, and the counters the metrics show.
//!
//! The rule none of the references needs: a recipient's copy that the administrator owns (a
//! suppressed report, a hold, a non-local recipient) is never listed to anyone and no link is
//! ever made for it; a virus verdict is listed to its owner without a link.

pub mod digest;
pub mod web;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use backstop_config::{BatvKeys, Quarantine};
use backstop_queue::{KindTotals, QuarantineRecord};
use backstop_types::quarantine::{Owner, ReasonKind};
use backstop_types::{Domain, QueueId, UnixTime};
use backstop_web::token::{Actions, TokenKeys};

/// What the digests, the release pages and the admin API share.
pub struct Runtime {
    pub settings: Quarantine,
    /// `data_dir/quarantine`: the generated key, and when the last digest run was.
    pub dir: std::path::PathBuf,
    pub keys: TokenKeys,
    pub hostname: String,
    pub local_domains: Vec<Domain>,
    pub counters: Counters,
    /// Messages and octets held per kind, as the last retention run counted them (the
    /// metrics and the console read this, not the whole quarantine).
    pub totals: Mutex<Vec<(ReasonKind, KindTotals)>>,
    /// One snapshot per retention run (hourly), the last week: the console's "over time".
    pub history: Mutex<VecDeque<Snapshot>>,
    /// Held while digests are made and queued.
    pub digests: tokio::sync::Mutex<()>,
}

/// The backscatter accounting at one time.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: UnixTime,
    /// Reports suppressed so far (all reasons that prevent backscatter).
    pub suppressed: u64,
    /// Messages held, per kind.
    pub held: Vec<(ReasonKind, KindTotals)>,
}

/// Snapshots kept: a week of hourly ones.
const HISTORY: usize = 168;

/// The quarantine's counters (`quarantine_*_total`).
#[derive(Default)]
pub struct Counters {
    released: AtomicU64,
    deleted: AtomicU64,
    digests: AtomicU64,
}

impl Counters {
    /// Recipients' copies released.
    pub fn released(&self, n: usize) {
        self.released.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Messages (or recipients' copies) deleted by a person, not by retention.
    pub fn deleted(&self, n: usize) {
        self.deleted.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn digest_sent(&self) {
        self.digests.fetch_add(1, Ordering::Relaxed);
    }

    /// (released, deleted, digests sent).
    pub fn totals(&self) -> (u64, u64, u64) {
        (
            self.released.load(Ordering::Relaxed),
            self.deleted.load(Ordering::Relaxed),
            self.digests.load(Ordering::Relaxed),
        )
    }
}

impl Runtime {
    /// `keys`: the configured keys as the loading step read them; `None`: the generated one
    /// (made on first use).
    pub fn new(
        settings: Quarantine,
        keys: Option<TokenKeys>,
        data_dir: &Path,
        hostname: String,
        local_domains: Vec<Domain>,
    ) -> anyhow::Result<Runtime> {
        let keys = match keys {
            Some(keys) => keys,
            None => generated_key(&settings.keys)?,
        };
        Ok(Runtime {
            settings,
            dir: data_dir.join("quarantine"),
            keys,
            hostname,
            local_domains,
            counters: Counters::default(),
            totals: Mutex::new(Vec::new()),
            history: Mutex::new(VecDeque::new()),
            digests: tokio::sync::Mutex::new(()),
        })
    }

    /// The actions recipient `index`'s owner may take on `record`; none when the copy is not
    /// held, not the recipient's own, or a verdict only the administrator lifts.
    pub fn actions_for(record: &QuarantineRecord, index: usize) -> Actions {
        let Some(held) = record.held.get(index) else {
            return Actions::NONE;
        };
        if held.owner != Owner::Recipient
            || held.state != backstop_queue::HeldState::Held
            || !record.reason.recipient_may_release()
        {
            return Actions::NONE;
        }
        let allow = match record.envelope.sender.address() {
            Some(_) if record.reason.allow_list_lifts() => Actions::ALLOW_SENDER,
            _ => Actions::NONE,
        };
        Actions::RELEASE | Actions::DELETE | allow
    }

    /// A signed release link's token for recipient `index` of `id`, valid for
    /// `link_lifetime` but never past the item's retention; `None` when its owner may not act
    /// on it.
    pub fn token_for(
        &self,
        id: QueueId,
        record: &QuarantineRecord,
        index: usize,
        now: UnixTime,
    ) -> Option<String> {
        let actions = Self::actions_for(record, index);
        if actions == Actions::NONE {
            return None;
        }
        let recipient = record.envelope.recipients.get(index)?.address.to_string();
        let retention_ends = record
            .at
            .0
            .saturating_add(self.settings.retention_of(record.reason.kind).as_secs());
        let expires = now
            .0
            .saturating_add(self.settings.link_lifetime.as_secs())
            .min(retention_ends);
        if expires <= now.0 {
            return None;
        }
        self.keys.sign(id.0, &recipient, actions, expires).ok()
    }

    /// Records a retention run's count of the quarantine, with the reports suppressed so far.
    pub fn record_totals(
        &self,
        at: UnixTime,
        totals: Vec<(ReasonKind, KindTotals)>,
        suppressed: u64,
    ) {
        if let Ok(mut history) = self.history.lock() {
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(Snapshot {
                at,
                suppressed,
                held: totals.clone(),
            });
        }
        if let Ok(mut current) = self.totals.lock() {
            *current = totals;
        }
    }

    /// The retention of each kind.
    pub fn retention(&self, kind: ReasonKind) -> std::time::Duration {
        self.settings.retention_of(kind)
    }
}

/// The generated release-link key (made on first use, as BATV's default key is).
fn generated_key(keys: &BatvKeys) -> anyhow::Result<TokenKeys> {
    match keys {
        BatvKeys::Generated { file } => {
            let secret = crate::batv::read_or_make(file)?;
            TokenKeys::new(vec![(0, secret)], 0)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
        }
        BatvKeys::Files { .. } => anyhow::bail!("the configured quarantine keys were not loaded"),
    }
}

#[cfg(test)]
mod tests;
