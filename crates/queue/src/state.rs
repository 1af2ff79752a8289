//! Small state other parts need kept: the index of Message-IDs we sent (to recognise bounces
//! to mail we really sent) and a key-value area (greylisting, caches), each with a time.

use backstop_types::UnixTime;
use rocksdb::WriteBatch;

use crate::store::{Queue, QueueError, CF_SENT_IDS, CF_STATE};

/// The key of a Message-ID in the sent index: the first 16 bytes of SHA-256 over the id
/// without its angle brackets, so that every part of backstop hashes it the same way.
pub fn message_id_hash(message_id: &str) -> [u8; 16] {
    let id = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut hash = [0; 16];
    hash.copy_from_slice(&digest.as_ref()[..16]);
    hash
}

impl Queue {
    /// Records that a message with this Message-ID hash was sent at `at`.
    pub fn record_sent_message_id(&self, hash: [u8; 16], at: UnixTime) -> Result<(), QueueError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_SENT_IDS), hash, at.0.to_be_bytes());
        self.write_synced(batch)
    }

    /// When a message with this Message-ID hash was sent, if it was.
    pub fn sent_message_id(&self, hash: [u8; 16]) -> Result<Option<UnixTime>, QueueError> {
        Ok(self
            .inner
            .db
            .get_cf(self.cf(CF_SENT_IDS), hash)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(|b| UnixTime(u64::from_be_bytes(b))))
    }

    /// Whether no Message-ID was ever recorded (a new installation: bounce provenance cannot
    /// tell ours from others yet).
    pub fn sent_message_ids_empty(&self) -> Result<bool, QueueError> {
        let mut all = self
            .inner
            .db
            .iterator_cf(self.cf(CF_SENT_IDS), rocksdb::IteratorMode::Start);
        match all.next() {
            None => Ok(true),
            Some(item) => item.map(|_| false).map_err(QueueError::from),
        }
    }

    /// Stores `value` under `key` until `expires` (not synced: state, not mail).
    pub fn state_put(&self, key: &[u8], value: &[u8], expires: UnixTime) -> Result<(), QueueError> {
        let mut stored = expires.0.to_be_bytes().to_vec();
        stored.extend_from_slice(value);
        self.inner.db.put_cf(self.cf(CF_STATE), key, stored)?;
        Ok(())
    }

    /// The value under `key`, unless it has expired by `now`.
    pub fn state_get(&self, key: &[u8], now: UnixTime) -> Result<Option<Vec<u8>>, QueueError> {
        let Some(stored) = self.inner.db.get_cf(self.cf(CF_STATE), key)? else {
            return Ok(None);
        };
        let Some((expires, value)) = stored.split_first_chunk::<8>() else {
            return Ok(None);
        };
        if u64::from_be_bytes(*expires) <= now.0 {
            return Ok(None);
        }
        Ok(Some(value.to_vec()))
    }
}

#[cfg(test)]
mod tests;
