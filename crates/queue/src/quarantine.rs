//! Quarantine: messages that must be neither delivered nor bounced (a content verdict, or a
//! failure after acceptance for a sender we cannot verify). Each keeps its envelope, its body
//! and the reason, until an administrator releases or deletes it or the retention runs out.
//!
//! Keys in the `quarantine` column family: `id ++ 0` → record, `id ++ 1` → body (its head when
//! spooled), `id ++ 2` → a spooled body's length (see [`crate::spool`]).

use std::time::Duration;

use backstop_types::{Body, Envelope, QueueId, UnixTime};
use rocksdb::{IteratorMode, WriteBatch};

use crate::record::{self, Entry, QuarantineRecord};
use crate::spool::{marker, QUARANTINE_MARKER, QUEUED_MARKER};
use crate::store::{id_from_key, Queue, QueueError, CF_ENTRIES, CF_MESSAGES, CF_QUARANTINE};

const RECORD: u8 = 0;
const BODY: u8 = 1;

fn key(id: QueueId, kind: u8) -> [u8; 9] {
    let mut k = [0; 9];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8] = kind;
    k
}

impl Queue {
    /// Moves a queued message into quarantine. False if it is not queued.
    pub fn quarantine(&self, id: QueueId, reason: &str, now: UnixTime) -> Result<bool, QueueError> {
        let _guard = self.lock();
        let Some(entry) = self.entry_locked(id)? else {
            return Ok(false);
        };
        let body = self.stored_body(id)?;
        let mut batch = WriteBatch::default();
        self.put_quarantined(&mut batch, id, &entry.envelope, &body, reason, now);
        self.remove(&mut batch, id)?;
        self.write_synced(batch)?;
        tracing::warn!(queue_id = %id, reason, "message quarantined");
        Ok(true)
    }

    /// Stores a new message straight into quarantine under a new queue id (an in-session
    /// "quarantine" verdict): synced before it returns, like [`Queue::enqueue`].
    /// A spooled body's file is moved into place first, as [`Queue::enqueue`] does.
    pub fn quarantine_new(
        &self,
        envelope: &Envelope,
        body: &Body,
        reason: &str,
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
        self.enqueue_quarantined(id, envelope, body, reason)?;
        tracing::warn!(queue_id = %id, reason, "message accepted into quarantine");
        Ok(id)
    }

    /// Stores a message straight into quarantine under `id`: synced before it returns.
    pub fn enqueue_quarantined(
        &self,
        id: QueueId,
        envelope: &Envelope,
        body: &Body,
        reason: &str,
    ) -> Result<(), QueueError> {
        let mut batch = WriteBatch::default();
        self.put_quarantined(&mut batch, id, envelope, body, reason, envelope.arrival);
        self.write_synced(batch)
    }

    /// Everything in quarantine, oldest first.
    pub fn quarantine_list(&self) -> Result<Vec<(QueueId, QuarantineRecord)>, QueueError> {
        let mut out = Vec::new();
        for item in self
            .inner
            .db
            .iterator_cf(self.cf(CF_QUARANTINE), IteratorMode::Start)
        {
            let (k, value) = item?;
            if k.len() != 9 || k[8] != RECORD {
                continue;
            }
            let id = id_from_key(&k);
            match record::decode_quarantine(&value) {
                Ok(r) => out.push((id, r)),
                Err(e) => {
                    tracing::error!(queue_id = %id, error = %e, "undecodable quarantine record")
                }
            }
        }
        Ok(out)
    }

    /// One quarantined message with its body.
    pub fn quarantine_show(
        &self,
        id: QueueId,
    ) -> Result<Option<(QuarantineRecord, Body)>, QueueError> {
        let db = &self.inner.db;
        let Some(bytes) = db.get_cf(self.cf(CF_QUARANTINE), key(id, RECORD))? else {
            return Ok(None);
        };
        let record = record::decode_quarantine(&bytes)
            .map_err(|source| QueueError::Record { id, source })?;
        let head = db
            .get_cf(self.cf(CF_QUARANTINE), key(id, BODY))?
            .unwrap_or_default();
        let spooled = db.get_cf(self.cf(CF_QUARANTINE), marker(id, QUARANTINE_MARKER))?;
        Ok(Some((record, self.body_from(id, head, spooled)?)))
    }

    /// Puts a quarantined message back in the queue, due now, under its old id.
    pub fn quarantine_release(&self, id: QueueId, now: UnixTime) -> Result<bool, QueueError> {
        let _guard = self.lock();
        let Some((record, body)) = self.quarantine_show(id)? else {
            return Ok(false);
        };
        let mut batch = WriteBatch::default();
        let k = id.to_be_bytes();
        let size = body.len();
        self.put_body(
            &mut batch,
            CF_MESSAGES,
            &k,
            marker(id, QUEUED_MARKER),
            &body,
        );
        batch.put_cf(
            self.cf(CF_ENTRIES),
            k,
            record::encode_entry(&Entry::new(record.envelope, size)),
        );
        self.set_due(&mut batch, id, Some(now.0))?;
        batch.delete_cf(self.cf(CF_QUARANTINE), key(id, RECORD));
        batch.delete_cf(self.cf(CF_QUARANTINE), key(id, BODY));
        batch.delete_cf(self.cf(CF_QUARANTINE), marker(id, QUARANTINE_MARKER));
        self.write_synced(batch)?;
        tracing::info!(queue_id = %id, "released from quarantine");
        Ok(true)
    }

    pub fn quarantine_delete(&self, id: QueueId) -> Result<bool, QueueError> {
        if self
            .inner
            .db
            .get_cf(self.cf(CF_QUARANTINE), key(id, RECORD))?
            .is_none()
        {
            return Ok(false);
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_QUARANTINE), key(id, RECORD));
        batch.delete_cf(self.cf(CF_QUARANTINE), key(id, BODY));
        batch.delete_cf(self.cf(CF_QUARANTINE), marker(id, QUARANTINE_MARKER));
        self.write_synced(batch)?;
        self.unlink_spooled(id);
        Ok(true)
    }

    /// Deletes what has been in quarantine longer than `retention`; returns how many.
    pub fn expire_quarantine(
        &self,
        now: UnixTime,
        retention: Duration,
    ) -> Result<usize, QueueError> {
        let mut expired = 0;
        for (id, record) in self.quarantine_list()? {
            if record.at.0.saturating_add(retention.as_secs()) <= now.0 {
                self.quarantine_delete(id)?;
                tracing::info!(queue_id = %id, reason = %backstop_types::text::Escaped(&record.reason), "quarantine retention over: deleted");
                expired += 1;
            }
        }
        Ok(expired)
    }

    pub(crate) fn put_quarantined(
        &self,
        batch: &mut WriteBatch,
        id: QueueId,
        envelope: &Envelope,
        body: &Body,
        reason: &str,
        at: UnixTime,
    ) {
        let record = QuarantineRecord {
            envelope: envelope.clone(),
            reason: reason.to_owned(),
            at,
        };
        batch.put_cf(
            self.cf(CF_QUARANTINE),
            key(id, RECORD),
            record::encode_quarantine(&record),
        );
        self.put_body(
            batch,
            CF_QUARANTINE,
            &key(id, BODY),
            marker(id, QUARANTINE_MARKER),
            body,
        );
    }
}

#[cfg(test)]
mod tests;
