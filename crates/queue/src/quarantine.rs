//! Quarantine: messages that must be neither delivered nor bounced (a content verdict, a DMARC
//! `p=quarantine`, a failure after acceptance for a sender we cannot verify, an administrator's
//! hold). Each keeps its envelope, its body, a structured [`Reason`] and per recipient its
//! owner and state, until it is released or deleted or its kind's retention runs out.
//!
//! Keys in the `quarantine` column family: `id ++ 0` → record, `id ++ 1` → body (its head when
//! spooled), `id ++ 2` → a spooled body's length (see [`crate::spool`]). Listing reads records
//! only, in queue id order (oldest first), from a cursor.
//!
//! The allow-list (a sender a recipient takes mail from even when a content check would hold
//! it) lives in the `state` column family under `allow\0recipient\0sender`.

use std::time::Duration;

use backstop_types::quarantine::{Owner, Reason, ReasonKind};
use backstop_types::{Body, Envelope, QueueId, UnixTime};
use rocksdb::{Direction, IteratorMode, WriteBatch};

use crate::record::{self, Entry, HeldState, QuarantineRecord};
use crate::spool::{file_of, marker, QUARANTINE_MARKER, QUEUED_MARKER};
use crate::store::{
    id_from_key, Queue, QueueError, CF_DUE, CF_ENTRIES, CF_MESSAGES, CF_QUARANTINE, CF_STATE,
};

const RECORD: u8 = 0;
const BODY: u8 = 1;

fn key(id: QueueId, kind: u8) -> [u8; 9] {
    let mut k = [0; 9];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8] = kind;
    k
}

/// What a quarantine listing selects. Text filters match case-insensitively anywhere in the
/// sender, or in any recipient still held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuarantineQuery {
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub kind: Option<ReasonKind>,
    /// Quarantined at or after.
    pub since: Option<UnixTime>,
    /// Quarantined before.
    pub until: Option<UnixTime>,
}

impl QuarantineQuery {
    pub fn admits(&self, r: &QuarantineRecord) -> bool {
        let contains = |hay: &str, needle: &str| {
            hay.to_ascii_lowercase()
                .contains(&needle.to_ascii_lowercase())
        };
        self.kind.is_none_or(|k| r.reason.kind == k)
            && self.since.is_none_or(|t| r.at >= t)
            && self.until.is_none_or(|t| r.at < t)
            && self
                .sender
                .as_deref()
                .is_none_or(|s| contains(&r.envelope.sender.to_string(), s))
            && self.recipient.as_deref().is_none_or(|s| {
                r.still_held()
                    .any(|(_, rcpt, _)| contains(&rcpt.address.to_string(), s))
            })
    }
}

/// A page of a listing, and where the next one starts.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<QueueId>,
}

/// What a release did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// The queue id the released copy has: the quarantined one's when every recipient still
    /// held went, a new one when others stay held.
    pub queue_id: QueueId,
    /// The recipients released (none: nobody asked for was still held).
    pub recipients: Vec<String>,
}

/// What an administrator's hold did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Held,
    /// Not in the queue.
    NotQueued,
    /// A delivery attempt has it now (leased): held now, the attempt's report would find the
    /// entry gone and what it delivered would stay held, to be delivered again on release.
    BeingDelivered,
}

/// Messages and octets held, per reason kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindTotals {
    pub messages: u64,
    pub octets: u64,
}

impl Queue {
    /// An administrator's hold: moves a queued message's pending recipients into quarantine,
    /// unless a delivery attempt has it now.
    pub fn quarantine(
        &self,
        id: QueueId,
        reason: &Reason,
        now: UnixTime,
    ) -> Result<Hold, QueueError> {
        let _guard = self.lock();
        let Some(entry) = self.entry_locked(id)? else {
            return Ok(Hold::NotQueued);
        };
        if self.leased(id, &entry)? {
            return Ok(Hold::BeingDelivered);
        }
        let body = self.stored_body(id)?;
        let mut envelope = entry.envelope.clone();
        let pending: Vec<bool> = entry
            .states
            .iter()
            .map(|s| matches!(s, backstop_types::RecipientState::Pending { .. }))
            .collect();
        let mut i = 0;
        envelope.recipients.retain(|_| {
            i += 1;
            pending[i - 1]
        });
        let owners = vec![Owner::Admin; envelope.recipients.len()];
        let mut batch = WriteBatch::default();
        self.put_quarantined(&mut batch, id, &envelope, &body, reason, &owners, now);
        self.remove(&mut batch, id)?;
        self.write_synced(batch)?;
        tracing::warn!(queue_id = %id, kind = %reason.kind, reason = %backstop_types::text::Escaped(&reason.to_string()), "message quarantined");
        Ok(Hold::Held)
    }

    /// Stores a new message straight into quarantine under a new queue id (an in-session
    /// "quarantine" verdict): synced before it returns, like [`Queue::enqueue`].
    /// A spooled body's file is moved into place first, as [`Queue::enqueue`] does.
    pub fn quarantine_new(
        &self,
        envelope: &Envelope,
        body: &Body,
        reason: &Reason,
        owners: &[Owner],
    ) -> Result<QueueId, QueueError> {
        let id = self.next_id();
        let placed;
        let body = match body.tail() {
            None => body,
            Some(tail) => {
                let tail = self
                    .take_spooled(id, tail)
                    .map_err(|e| QueueError::Spool(id.to_string(), e))?;
                placed = Body::spooled(body.head().to_vec(), tail);
                &placed
            }
        };
        // On a failed write the file stays for the next start's sweep (see `enqueue`).
        let mut batch = WriteBatch::default();
        self.put_quarantined(
            &mut batch,
            id,
            envelope,
            body,
            reason,
            owners,
            envelope.arrival,
        );
        self.write_synced(batch)?;
        tracing::warn!(queue_id = %id, kind = %reason.kind, reason = %backstop_types::text::Escaped(&reason.to_string()), "message accepted into quarantine");
        Ok(id)
    }

    /// Everything in quarantine, oldest first (see [`Queue::quarantine_page`] for a page).
    pub fn quarantine_list(&self) -> Result<Vec<(QueueId, QuarantineRecord)>, QueueError> {
        let mut out = Vec::new();
        self.each_quarantined(|id, record| {
            out.push((id, record));
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with every quarantined record, oldest first, a page at a time: at most a
    /// page of records is held at once.
    pub fn each_quarantined(
        &self,
        mut f: impl FnMut(QueueId, QuarantineRecord) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        let mut after = None;
        loop {
            let page = self.quarantine_page(&QuarantineQuery::default(), after, 10_000)?;
            for (id, record) in page.items {
                f(id, record)?;
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// Up to `limit` records `query` admits, after queue id `after`, oldest first. Only
    /// records are decoded; bodies are stepped over.
    pub fn quarantine_page(
        &self,
        query: &QuarantineQuery,
        after: Option<QueueId>,
        limit: usize,
    ) -> Result<Page<(QueueId, QuarantineRecord)>, QueueError> {
        let start = after.map_or([0; 9], |a| key(QueueId(a.0.saturating_add(1)), RECORD));
        let mut items = Vec::new();
        let mut last = None;
        for item in self.inner.db.iterator_cf(
            self.cf(CF_QUARANTINE),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (k, value) = item?;
            if k.len() != 9 || k[8] != RECORD {
                continue;
            }
            let id = id_from_key(&k);
            if items.len() == limit.max(1) {
                return Ok(Page { items, next: last });
            }
            last = Some(id);
            match record::decode_quarantine(&value) {
                Ok(r) if query.admits(&r) => items.push((id, r)),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "undecodable quarantine record")
                }
            }
        }
        Ok(Page { items, next: None })
    }

    /// One quarantined message's record, without its body.
    pub fn quarantine_record(&self, id: QueueId) -> Result<Option<QuarantineRecord>, QueueError> {
        let Some(bytes) = self
            .inner
            .db
            .get_cf(self.cf(CF_QUARANTINE), key(id, RECORD))?
        else {
            return Ok(None);
        };
        record::decode_quarantine(&bytes)
            .map(Some)
            .map_err(|source| QueueError::Record { id, source })
    }

    /// One quarantined message with its body.
    pub fn quarantine_show(
        &self,
        id: QueueId,
    ) -> Result<Option<(QuarantineRecord, Body)>, QueueError> {
        let Some(record) = self.quarantine_record(id)? else {
            return Ok(None);
        };
        let head = self.quarantine_head(id)?;
        let spooled = self
            .inner
            .db
            .get_cf(self.cf(CF_QUARANTINE), marker(id, QUARANTINE_MARKER))?;
        Ok(Some((record, self.body_from(id, head, spooled)?)))
    }

    /// A quarantined message's head (every header field), without its record or the rest of
    /// its body; empty when it is not there.
    pub fn quarantine_head(&self, id: QueueId) -> Result<Vec<u8>, QueueError> {
        Ok(self
            .inner
            .db
            .get_cf(self.cf(CF_QUARANTINE), key(id, BODY))?
            .unwrap_or_default())
    }

    /// Puts a quarantined message back in the queue, due now, for every recipient still held
    /// (`recipient: None`) or one of them. When no recipient stays held the message moves
    /// under its old id; otherwise the released copy gets a new id (a spooled body's file is
    /// linked, not copied) and the rest stays held. `None` if the message is not in
    /// quarantine.
    pub fn quarantine_release(
        &self,
        id: QueueId,
        recipient: Option<&str>,
        now: UnixTime,
    ) -> Result<Option<Released>, QueueError> {
        self.quarantine_release_if(id, recipient, now, |_, _| true)
    }

    /// [`Queue::quarantine_release`] of the held copies `may(record, index)` allows, decided
    /// under the update lock (a release page asks whether the copy is still its recipient's
    /// to release, with the record as it is now).
    pub fn quarantine_release_if(
        &self,
        id: QueueId,
        recipient: Option<&str>,
        now: UnixTime,
        may: impl Fn(&QuarantineRecord, usize) -> bool,
    ) -> Result<Option<Released>, QueueError> {
        let _guard = self.lock();
        let Some((mut record, body)) = self.quarantine_show(id)? else {
            return Ok(None);
        };
        let chosen: Vec<usize> = record
            .still_held()
            .filter(|(_, r, _)| {
                recipient.is_none_or(|want| r.address.to_string().eq_ignore_ascii_case(want))
            })
            .map(|(i, _, _)| i)
            .filter(|&i| may(&record, i))
            .collect();
        if chosen.is_empty() {
            return Ok(Some(Released {
                queue_id: id,
                recipients: Vec::new(),
            }));
        }
        let held_after = record.still_held().count() - chosen.len();
        let mut envelope = record.envelope.clone();
        envelope.recipients = chosen
            .iter()
            .map(|&i| record.envelope.recipients[i].clone())
            .collect();
        let recipients = envelope
            .recipients
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        let mut batch = WriteBatch::default();
        let queue_id = if held_after == 0 {
            self.put_queued(&mut batch, id, envelope, &body, now)?;
            self.delete_quarantined(&mut batch, id);
            id
        } else {
            let new = self.next_id();
            let body = match body.tail() {
                None => body,
                Some(tail) => {
                    let to = file_of(&self.inner.spool, new);
                    // The link is durable before the record that names it.
                    std::fs::hard_link(&tail.path, &to)
                        .and_then(|()| std::fs::File::open(&self.inner.spool)?.sync_all())
                        .map_err(|e| QueueError::Spool(new.to_string(), e))?;
                    Body::spooled(body.head().to_vec(), tail.moved_to(&to))
                }
            };
            self.put_queued(&mut batch, new, envelope, &body, now)?;
            for &i in &chosen {
                record.held[i].state = HeldState::Released(now);
            }
            self.put_record(&mut batch, id, &record);
            new
        };
        self.write_synced(batch)?;
        tracing::info!(queue_id = %id, released_as = %queue_id, recipients = %backstop_types::text::Escaped(&chosen.len().to_string()), "released from quarantine");
        Ok(Some(Released {
            queue_id,
            recipients,
        }))
    }

    /// Deletes a quarantined message (every recipient's copy). False if it is not there.
    pub fn quarantine_delete(&self, id: QueueId) -> Result<bool, QueueError> {
        let _guard = self.lock();
        if self
            .inner
            .db
            .get_cf(self.cf(CF_QUARANTINE), key(id, RECORD))?
            .is_none()
        {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        self.delete_quarantined(&mut batch, id);
        self.write_synced(batch)?;
        self.unlink_spooled(id);
        Ok(true)
    }

    /// Deletes one recipient's copy (its owner said so, and `may(record, index)` agrees under
    /// the update lock); the message goes when no copy is held any more. False if that
    /// recipient's copy is not held, or `may` says no.
    pub fn quarantine_discard(
        &self,
        id: QueueId,
        recipient: &str,
        now: UnixTime,
        may: impl Fn(&QuarantineRecord, usize) -> bool,
    ) -> Result<bool, QueueError> {
        let _guard = self.lock();
        let Some(mut record) = self.quarantine_record(id)? else {
            return Ok(false);
        };
        let Some(i) = record
            .still_held()
            .find(|(_, r, _)| r.address.to_string().eq_ignore_ascii_case(recipient))
            .map(|(i, _, _)| i)
            .filter(|&i| may(&record, i))
        else {
            return Ok(false);
        };
        record.held[i].state = HeldState::Deleted(now);
        let mut batch = WriteBatch::default();
        let gone = record.still_held().next().is_none();
        if gone {
            self.delete_quarantined(&mut batch, id);
        } else {
            self.put_record(&mut batch, id, &record);
        }
        self.write_synced(batch)?;
        if gone {
            self.unlink_spooled(id);
        }
        Ok(true)
    }

    /// Marks recipients (by index) as listed in a digest.
    pub fn quarantine_notified(&self, id: QueueId, recipients: &[usize]) -> Result<(), QueueError> {
        let _guard = self.lock();
        let Some(mut record) = self.quarantine_record(id)? else {
            return Ok(());
        };
        for &i in recipients {
            if let Some(held) = record.held.get_mut(i) {
                held.notified = true;
            }
        }
        let mut batch = WriteBatch::default();
        self.put_record(&mut batch, id, &record);
        self.write_synced(batch)
    }

    /// Deletes what has been in quarantine longer than its kind's retention; returns how many.
    pub fn expire_quarantine(
        &self,
        now: UnixTime,
        retention: impl Fn(ReasonKind) -> Duration,
    ) -> Result<usize, QueueError> {
        let mut expired = 0;
        self.each_quarantined(|id, record| {
            let keep = retention(record.reason.kind);
            if record.at.0.saturating_add(keep.as_secs()) <= now.0 {
                self.quarantine_delete(id)?;
                tracing::info!(queue_id = %id, kind = %record.reason.kind, reason = %backstop_types::text::Escaped(&record.reason.to_string()), "quarantine retention over: deleted");
                expired += 1;
            }
            Ok(())
        })?;
        Ok(expired)
    }

    /// Messages and octets held, per kind (a scan of every record).
    pub fn quarantine_totals(&self) -> Result<Vec<(ReasonKind, KindTotals)>, QueueError> {
        let mut totals: Vec<(ReasonKind, KindTotals)> = ReasonKind::ALL
            .into_iter()
            .map(|k| (k, KindTotals::default()))
            .collect();
        self.each_quarantined(|_, record| {
            if let Some((_, t)) = totals.iter_mut().find(|(k, _)| *k == record.reason.kind) {
                t.messages += 1;
                t.octets += record.size;
            }
            Ok(())
        })?;
        Ok(totals)
    }

    /// Lets `sender` (an address, or `@domain`) through to `recipient` where a content check
    /// or DMARC would hold the message (not a virus verdict). Synced.
    pub fn allow_sender(&self, recipient: &str, sender: &str) -> Result<(), QueueError> {
        let mut batch = WriteBatch::default();
        let mut stored = u64::MAX.to_be_bytes().to_vec();
        stored.extend_from_slice(b"allow");
        batch.put_cf(self.cf(CF_STATE), allow_key(recipient, sender), stored);
        self.write_synced(batch)
    }

    /// Takes a sender off a recipient's allow-list. False if it was not on it.
    pub fn disallow_sender(&self, recipient: &str, sender: &str) -> Result<bool, QueueError> {
        let k = allow_key(recipient, sender);
        if self.inner.db.get_cf(self.cf(CF_STATE), &k)?.is_none() {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_STATE), k);
        self.write_synced(batch)?;
        Ok(true)
    }

    /// Whether `recipient` allows mail from `sender`, by address or by its domain.
    pub fn sender_allowed(&self, recipient: &str, sender: &str) -> Result<bool, QueueError> {
        let cf = self.cf(CF_STATE);
        if self
            .inner
            .db
            .get_cf(cf, allow_key(recipient, sender))?
            .is_some()
        {
            return Ok(true);
        }
        match sender.rsplit_once('@') {
            Some((_, domain)) => Ok(self
                .inner
                .db
                .get_cf(cf, allow_key(recipient, &format!("@{domain}")))?
                .is_some()),
            None => Ok(false),
        }
    }

    /// Every allow-list entry: (recipient, sender).
    pub fn allow_list(&self) -> Result<Vec<(String, String)>, QueueError> {
        let mut out = Vec::new();
        for item in self.inner.db.iterator_cf(
            self.cf(CF_STATE),
            IteratorMode::From(ALLOW_PREFIX, Direction::Forward),
        ) {
            let (k, _) = item?;
            let Some(rest) = k.strip_prefix(ALLOW_PREFIX) else {
                break;
            };
            let text = String::from_utf8_lossy(rest);
            if let Some((recipient, sender)) = text.split_once('\0') {
                out.push((recipient.to_owned(), sender.to_owned()));
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn put_quarantined(
        &self,
        batch: &mut WriteBatch,
        id: QueueId,
        envelope: &Envelope,
        body: &Body,
        reason: &Reason,
        owners: &[Owner],
        at: UnixTime,
    ) {
        let record =
            QuarantineRecord::new(envelope.clone(), reason.clone(), at, body.len(), owners);
        self.put_record(batch, id, &record);
        self.put_body(
            batch,
            CF_QUARANTINE,
            &key(id, BODY),
            marker(id, QUARANTINE_MARKER),
            body,
        );
    }

    fn put_record(&self, batch: &mut WriteBatch, id: QueueId, record: &QuarantineRecord) {
        batch.put_cf(
            self.cf(CF_QUARANTINE),
            key(id, RECORD),
            record::encode_quarantine(record),
        );
    }

    fn delete_quarantined(&self, batch: &mut WriteBatch, id: QueueId) {
        batch.delete_cf(self.cf(CF_QUARANTINE), key(id, RECORD));
        batch.delete_cf(self.cf(CF_QUARANTINE), key(id, BODY));
        batch.delete_cf(self.cf(CF_QUARANTINE), marker(id, QUARANTINE_MARKER));
    }

    /// Whether a delivery attempt holds `id` now: a lease moved its schedule past the time
    /// its pending recipients were due (an attempt's report brings the two together again).
    fn leased(&self, id: QueueId, entry: &Entry) -> Result<bool, QueueError> {
        let Some(due) = self.inner.db.get_cf(self.cf(CF_DUE), id.to_be_bytes())? else {
            return Ok(false);
        };
        let due = <[u8; 8]>::try_from(due.as_slice()).map_or(0, u64::from_be_bytes);
        let next = entry
            .states
            .iter()
            .filter_map(|s| match s {
                backstop_types::RecipientState::Pending { next_attempt, .. } => {
                    Some(next_attempt.0)
                }
                _ => None,
            })
            .min();
        Ok(next.is_some_and(|next| due > next))
    }

    /// Writes `id` into the queue with `envelope`, every recipient pending and due now. Its
    /// arrival becomes `now`: a released copy's lifetime counts from its release, or one that
    /// waited out most of it in quarantine would expire at its first temporary failure.
    fn put_queued(
        &self,
        batch: &mut WriteBatch,
        id: QueueId,
        mut envelope: Envelope,
        body: &Body,
        now: UnixTime,
    ) -> Result<(), QueueError> {
        envelope.arrival = now;
        let k = id.to_be_bytes();
        self.put_body(batch, CF_MESSAGES, &k, marker(id, QUEUED_MARKER), body);
        batch.put_cf(
            self.cf(CF_ENTRIES),
            k,
            record::encode_entry(&Entry::new(envelope, body.len())),
        );
        self.set_due(batch, id, Some(now.0))
    }
}

const ALLOW_PREFIX: &[u8] = b"allow\0";

fn allow_key(recipient: &str, sender: &str) -> Vec<u8> {
    let mut k = ALLOW_PREFIX.to_vec();
    k.extend_from_slice(recipient.to_ascii_lowercase().as_bytes());
    k.push(0);
    k.extend_from_slice(sender.to_ascii_lowercase().as_bytes());
    k
}

#[cfg(test)]
mod tests;
