//! Scheduling: leasing due messages to the delivery agent, recording what attempts came to,
//! retries with backoff, expiry, and the administrator's hold, release, flush and delete.
//!
//! Delivery is at least once. A lease moves the message's schedule entry to the end of the
//! lease; when the agent reports back the entry is rescheduled or removed. If the process dies
//! in between, the message simply becomes due again when the lease runs out and is delivered
//! again: a recipient may then get it twice, but no accepted message is ever lost.

use std::sync::atomic::Ordering;
use std::time::Duration;

use backstop_types::quarantine::{Owner, Reason};
use backstop_types::{
    Attempt, AttemptOutcome, EnhancedStatus, Envelope, QueueId, RecipientState, RemoteReply,
    UnixTime,
};
use rocksdb::{BottommostLevelCompaction, CompactOptions, IteratorMode, ReadOptions, WriteBatch};

use crate::record::{self, Entry};
use crate::store::{
    id_from_key, schedule_key, Queue, QueueError, CF_DUE, CF_ENTRIES, CF_MESSAGES, CF_SCHEDULE,
};

/// Deleted schedule keys after which the past of the schedule is compacted.
const COMPACT_SCHEDULE_AFTER: u64 = 10_000;

/// The first schedule key after every message due at `now`: the end of the schedule's past.
fn after_due(now: UnixTime) -> [u8; 16] {
    schedule_key(now.0.saturating_add(1), QueueId(0))
}

/// When to try again and when to give up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait after the first failed attempt; doubled after each further one...
    pub min_backoff: Duration,
    /// ...up to this.
    pub max_backoff: Duration,
    /// A recipient still not delivered this long after arrival fails with 4.4.7.
    pub lifetime: Duration,
}

impl RetryPolicy {
    /// The wait after `attempts` failed attempts (1 or more).
    pub fn backoff(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(30);
        self.min_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff)
    }
}

/// What is left after recording attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterAttempts {
    /// Some recipients are still pending; the message is due again at this time.
    Rescheduled { entry: Entry, due: UnixTime },
    /// Every recipient is delivered or failed: the message has left the queue. The entry says
    /// how each recipient ended, for the DSN generator.
    Finished(Entry),
    /// The message is no longer in the queue (deleted by an administrator meanwhile).
    Gone,
}

/// What changed for the recipients in one call of [`Queue::record_attempts_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Recipients (by index) that failed for good just now: a permanent reply, or expiry.
    pub failed: Vec<usize>,
    /// Recipients delivered just now.
    pub delivered: Vec<usize>,
}

/// What the DSN generator makes of [`Changes`]: reports to queue in the same write as the
/// attempts, so that a report is queued exactly once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notices {
    /// Each report's envelope (null sender) and message.
    pub reports: Vec<(Envelope, Vec<u8>)>,
    /// Recipients (by index) whose failure a report covers: they need no quarantine.
    pub reported: Vec<usize>,
    /// Delay notices sent for the message in all, from now on.
    pub delay_notices: u32,
}

impl Queue {
    /// Hands out up to `max` messages due at `now` (their entries: the body is read when a
    /// connection is ready for it, [`Queue::message`]), each leased until `now + lease`: it
    /// will not be handed out again before then unless the lease is settled by
    /// [`Queue::record_attempts`]. Held messages are never due.
    pub fn lease_due(
        &self,
        now: UnixTime,
        lease: Duration,
        max: usize,
    ) -> Result<Vec<(QueueId, Entry)>, QueueError> {
        let guard = self.lock();
        let mut due_ids = Vec::new();
        // Bounded at `now`, so that the scan stops there rather than stepping over the deleted
        // keys of the future (finished messages' leases) to find the next live one.
        let mut bounded = ReadOptions::default();
        bounded.set_iterate_upper_bound(after_due(now));
        for item in
            self.inner
                .db
                .iterator_cf_opt(self.cf(CF_SCHEDULE), bounded, IteratorMode::Start)
        {
            let (key, _) = item?;
            if due_ids.len() >= max {
                break;
            }
            due_ids.push(id_from_key(&key[8..]));
        }
        let until = now.0.saturating_add(lease.as_secs());
        let mut leased = Vec::new();
        let mut batch = WriteBatch::default();
        for id in due_ids {
            let Some(entry) = self.entry_locked(id)? else {
                // No entry: a stale schedule key. Drop it.
                self.set_due(&mut batch, id, None)?;
                continue;
            };
            self.set_due(&mut batch, id, Some(until))?;
            leased.push((id, entry));
        }
        // Not synced: a lease lost in a crash only makes the message due again at once.
        self.inner.db.write(batch)?;
        drop(guard);
        self.compact_schedule(now);
        Ok(leased)
    }

    /// Drops the tombstones of the schedule's past once there are many. Every lease and every
    /// finished message deletes a schedule key, and the scan in [`Queue::lease_due`] starts at
    /// the beginning: without this, draining a large queue would step over every message
    /// delivered so far at each pass. The schedule holds only keys, so this is quick.
    fn compact_schedule(&self, now: UnixTime) {
        let deletes = &self.inner.schedule_deletes;
        if deletes.load(Ordering::Relaxed) < COMPACT_SCHEDULE_AFTER {
            return;
        }
        deletes.store(0, Ordering::Relaxed);
        // Rewritten even where RocksDB would only move a file down: the tombstones must go.
        let mut options = CompactOptions::default();
        options.set_bottommost_level_compaction(BottommostLevelCompaction::ForceOptimized);
        self.inner.db.compact_range_cf_opt(
            self.cf(CF_SCHEDULE),
            None::<&[u8]>,
            Some(after_due(now)),
            &options,
        );
    }

    /// Records what an attempt came to for some recipients (by index in the envelope), and
    /// reschedules the message or, when no recipient is pending any more, removes it. Failed
    /// recipients go to quarantine with the message: see [`Queue::record_attempts_with`] for
    /// reporting them instead.
    pub fn record_attempts(
        &self,
        id: QueueId,
        outcomes: &[(usize, AttemptOutcome)],
        now: UnixTime,
        policy: &RetryPolicy,
    ) -> Result<AfterAttempts, QueueError> {
        self.record_attempts_with(id, outcomes, now, policy, None, &mut |entry, _| Notices {
            delay_notices: entry.delay_notices,
            ..Notices::default()
        })
    }

    /// [`Queue::record_attempts`], asking `notify` which reports the changes call for. The
    /// reports are queued in the same synced write that records the attempts, and so is
    /// `sent`, the hash of a Message-ID our user sent (the sent index). When the message is
    /// finished, the failures no report covered send it to quarantine with the reason: never
    /// a bounce from here.
    pub fn record_attempts_with(
        &self,
        id: QueueId,
        outcomes: &[(usize, AttemptOutcome)],
        now: UnixTime,
        policy: &RetryPolicy,
        sent: Option<[u8; 16]>,
        notify: &mut dyn FnMut(&Entry, &Changes) -> Notices,
    ) -> Result<AfterAttempts, QueueError> {
        let guard = self.lock();
        let Some(mut entry) = self.entry_locked(id)? else {
            return Ok(AfterAttempts::Gone);
        };
        let expires = entry
            .envelope
            .arrival
            .0
            .saturating_add(policy.lifetime.as_secs());
        let mut changes = Changes::default();
        for (index, outcome) in outcomes {
            let Some(state) = entry.states.get_mut(*index) else {
                continue;
            };
            let attempts = match state {
                RecipientState::Pending { attempts, .. } => *attempts,
                // Already settled (a duplicate report after a lease ran out): keep it.
                _ => continue,
            };
            *state = match outcome.clone() {
                AttemptOutcome::Delivered(last) => {
                    changes.delivered.push(*index);
                    RecipientState::Delivered { at: now, last }
                }
                AttemptOutcome::Permanent(last) => {
                    changes.failed.push(*index);
                    RecipientState::Failed { at: now, last }
                }
                AttemptOutcome::Transient(last) if now.0 >= expires => {
                    changes.failed.push(*index);
                    RecipientState::Failed {
                        at: now,
                        last: expired(last, policy.lifetime),
                    }
                }
                AttemptOutcome::Transient(last) => {
                    let attempts = attempts + 1;
                    let next = now.0.saturating_add(policy.backoff(attempts).as_secs());
                    RecipientState::Pending {
                        attempts,
                        next_attempt: UnixTime(next.min(expires.max(now.0))),
                        last: Some(last),
                    }
                }
            };
        }
        let mut batch = WriteBatch::default();
        if let Some(hash) = sent {
            batch.put_cf(
                self.cf(crate::store::CF_SENT_IDS),
                hash,
                now.0.to_be_bytes(),
            );
        }
        let notices = notify(&entry, &changes);
        for index in notices.reported {
            if let Some(reported) = entry.reported.get_mut(index) {
                *reported = true;
            }
        }
        entry.delay_notices = notices.delay_notices;
        for (envelope, body) in notices.reports {
            let report = self.next_id();
            let due = envelope.arrival.0;
            batch.put_cf(
                self.cf(CF_ENTRIES),
                report.to_be_bytes(),
                record::encode_entry(&Entry::new(envelope, body.len() as u64)),
            );
            batch.put_cf(self.cf(CF_MESSAGES), report.to_be_bytes(), body);
            self.set_due(&mut batch, report, Some(due))?;
            tracing::info!(queue_id = %id, report = %report, "delivery status notification queued");
        }
        let key = id.to_be_bytes();
        let next = entry
            .states
            .iter()
            .filter_map(|s| match s {
                RecipientState::Pending { next_attempt, .. } => Some(next_attempt.0),
                _ => None,
            })
            .min();
        // Set when the message leaves for good (not into quarantine): its spool file goes.
        let mut finished = false;
        let after = match next {
            Some(due) => {
                batch.put_cf(self.cf(CF_ENTRIES), key, record::encode_entry(&entry));
                let due = if entry.held { None } else { Some(due) };
                self.set_due(&mut batch, id, due)?;
                AfterAttempts::Rescheduled {
                    entry,
                    due: UnixTime(next.unwrap_or(now.0)),
                }
            }
            None => {
                // Failures no report covered are never bounced: the message goes to
                // quarantine with the reason, in the same write that takes it out of the
                // queue.
                let quarantined = failure_reason(&entry);
                if let Some(reason) = &quarantined {
                    let body = self.stored_body(id)?;
                    // Only the recipients it failed for: a release must not deliver twice
                    // to those it reached (or whose failure a report covered).
                    let mut undelivered = entry.envelope.clone();
                    undelivered.recipients = entry
                        .envelope
                        .recipients
                        .iter()
                        .zip(&entry.states)
                        .zip(&entry.reported)
                        .filter(|((_, state), reported)| {
                            matches!(state, RecipientState::Failed { .. }) && !**reported
                        })
                        .map(|((recipient, _), _)| recipient.clone())
                        .collect();
                    // The sender could not be verified (else a report would have gone):
                    // the administrator's alone, never listed to anyone else.
                    let owners = vec![Owner::Admin; undelivered.recipients.len()];
                    let why = Reason::undeliverable(reason.clone());
                    self.put_quarantined(&mut batch, id, &undelivered, &body, &why, &owners, now);
                    tracing::warn!(queue_id = %id, reason = %backstop_types::text::Escaped(reason), "delivery failed: quarantined, no bounce");
                }
                self.remove(&mut batch, id)?;
                finished = quarantined.is_none();
                AfterAttempts::Finished(entry)
            }
        };
        let written = self.write_unsynced(batch)?;
        drop(guard);
        // On disk before the caller acts on it (a log line, a report sent); concurrent
        // deliveries share the sync.
        self.sync_wal(written)?;
        if finished {
            self.unlink_spooled(id);
        }
        Ok(after)
    }

    /// Keeps a message from being delivered until [`Queue::release`]. False if not queued.
    pub fn hold(&self, id: QueueId) -> Result<bool, QueueError> {
        self.update(id, |queue, batch, entry| {
            entry.held = true;
            queue.set_due(batch, id, None)
        })
    }

    /// Makes a held message deliverable again, due now.
    pub fn release(&self, id: QueueId, now: UnixTime) -> Result<bool, QueueError> {
        self.update(id, |queue, batch, entry| {
            entry.held = false;
            queue.set_due(batch, id, Some(now.0))
        })
    }

    /// Makes messages due now (`None`: all that are not held), like `postqueue -f`. Returns
    /// how many.
    pub fn flush(&self, id: Option<QueueId>, now: UnixTime) -> Result<usize, QueueError> {
        let ids = match id {
            Some(id) => vec![id],
            None => self.list()?.into_iter().map(|(id, _)| id).collect(),
        };
        let mut flushed = 0;
        for id in ids {
            self.update(id, |queue, batch, entry| {
                if !entry.held {
                    flushed += 1;
                    // Every waiting recipient is due now, not only the message.
                    for state in &mut entry.states {
                        if let RecipientState::Pending { next_attempt, .. } = state {
                            *next_attempt = now;
                        }
                    }
                    queue.set_due(batch, id, Some(now.0))?;
                }
                Ok(())
            })?;
        }
        Ok(flushed)
    }

    /// Removes a message from the queue for good, like `postsuper -d`. False if not queued.
    pub fn delete(&self, id: QueueId) -> Result<bool, QueueError> {
        let _guard = self.lock();
        if self.entry_locked(id)?.is_none() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        self.remove(&mut batch, id)?;
        self.write_synced(batch)?;
        self.unlink_spooled(id);
        Ok(true)
    }

    /// The schedule as (due, id), soonest first; for administration and tests.
    pub fn schedule(&self) -> Result<Vec<(UnixTime, QueueId)>, QueueError> {
        let mut out = Vec::new();
        for item in self
            .inner
            .db
            .iterator_cf(self.cf(CF_SCHEDULE), IteratorMode::Start)
        {
            let (key, _) = item?;
            let due = u64::from_be_bytes(key[..8].try_into().unwrap_or([0; 8]));
            out.push((UnixTime(due), id_from_key(&key[8..])));
        }
        Ok(out)
    }

    /// Read-modify-write of one entry under the update lock; false if it is not queued.
    fn update(
        &self,
        id: QueueId,
        change: impl FnOnce(&Queue, &mut WriteBatch, &mut Entry) -> Result<(), QueueError>,
    ) -> Result<bool, QueueError> {
        let _guard = self.lock();
        let Some(mut entry) = self.entry_locked(id)? else {
            return Ok(false);
        };
        let mut batch = WriteBatch::default();
        change(self, &mut batch, &mut entry)?;
        batch.put_cf(
            self.cf(CF_ENTRIES),
            id.to_be_bytes(),
            record::encode_entry(&entry),
        );
        self.write_synced(batch)?;
        Ok(true)
    }

    /// Deletes every key of `id` from the queue proper (body, entry, schedule).
    pub(crate) fn remove(&self, batch: &mut WriteBatch, id: QueueId) -> Result<(), QueueError> {
        let key = id.to_be_bytes();
        batch.delete_cf(self.cf(CF_ENTRIES), key);
        batch.delete_cf(self.cf(CF_MESSAGES), key);
        batch.delete_cf(
            self.cf(CF_MESSAGES),
            crate::spool::marker(id, crate::spool::QUEUED_MARKER),
        );
        self.set_due(batch, id, None)?;
        batch.delete_cf(self.cf(CF_DUE), key);
        Ok(())
    }

    /// [`Queue::entry`] for callers that already hold the update lock: a damaged record reads
    /// as absent here and is moved aside by the next [`Queue::list`].
    pub(crate) fn entry_locked(&self, id: QueueId) -> Result<Option<Entry>, QueueError> {
        match self.decoded_entry(id)? {
            None => Ok(None),
            Some(Ok(entry)) => Ok(Some(entry)),
            Some(Err(e)) => {
                tracing::error!(queue_id = %id, error = %e, "undecodable queue record skipped");
                Ok(None)
            }
        }
    }
}

/// Why a finished message's failed recipients failed, or `None` when none did.
fn failure_reason(entry: &Entry) -> Option<String> {
    let failures: Vec<String> = entry
        .envelope
        .recipients
        .iter()
        .zip(&entry.states)
        .zip(&entry.reported)
        .filter_map(|((r, s), reported)| match s {
            RecipientState::Failed { last, .. } if !reported => {
                let status = last.reply.status.map_or(String::new(), |s| format!("{s} "));
                let host = last
                    .remote_host
                    .as_ref()
                    .map_or(String::new(), |h| format!(" (from {h})"));
                Some(format!(
                    "{}: {} {status}{}{host}",
                    r.address, last.reply.code, last.reply.text
                ))
            }
            _ => None,
        })
        .collect();
    (!failures.is_empty()).then(|| format!("delivery failed: {}", failures.join("; ")))
}

/// The last transient reply, turned into the final failure of an expired recipient.
fn expired(last: Attempt, lifetime: Duration) -> Attempt {
    let secs = lifetime.as_secs();
    let lifetime = match secs {
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s => format!("{s} seconds"),
    };
    Attempt {
        remote_host: last.remote_host,
        // The code stays the last transient one; the status says what the DSN must say.
        reply: RemoteReply {
            code: last.reply.code,
            status: Some(EnhancedStatus(4, 4, 7)),
            text: format!(
                "Message expired: not delivered in {lifetime}; last reply: {} {}",
                last.reply.code, last.reply.text
            ),
        },
    }
}

#[cfg(test)]
mod tests;
