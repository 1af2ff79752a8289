//! Small state other parts need kept: the index of Message-IDs we sent (to recognise bounces
//! to mail we really sent) and a key-value area (greylisting, caches), each with a time; and
//! [`NodeState`], the site's [`State`] when the site is this one node.

use std::time::Duration;

use backstop_state::{Answer, Key, MemoryCounters, State};
use backstop_types::UnixTime;
use rocksdb::{BottommostLevelCompaction, CompactOptions, IteratorMode, WriteBatch};

use crate::store::{Queue, QueueError, CF_SENT_IDS, CF_STATE};

pub use backstop_state::message_id_hash;

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

    /// Deletes what has expired by `now`: state entries past their time, and sent Message-IDs
    /// recorded more than `sent_retention` ago. The deletions are then compacted away, so the
    /// entries leave the database's files, not only its answers. Each column family is read
    /// once, in order, and deleted from in batches (no long write, no unbounded batch).
    pub fn expire_state(
        &self,
        now: UnixTime,
        sent_retention: Duration,
    ) -> Result<Expired, QueueError> {
        let state = self.delete_where(CF_STATE, |value| {
            // A value too short to hold its time is no entry of ours: it goes too.
            value
                .split_first_chunk::<8>()
                .is_none_or(|(expires, _)| u64::from_be_bytes(*expires) <= now.0)
        })?;
        let sent = self.delete_where(CF_SENT_IDS, |value| {
            <[u8; 8]>::try_from(value).map_or(true, |at| {
                u64::from_be_bytes(at).saturating_add(sent_retention.as_secs()) <= now.0
            })
        })?;
        Ok(Expired { state, sent })
    }

    /// Deletes every entry of `cf` whose value `expired` says so; compacts it when any went.
    fn delete_where(&self, cf: &str, expired: impl Fn(&[u8]) -> bool) -> Result<u64, QueueError> {
        const BATCH: usize = 10_000;
        let db = &self.inner.db;
        let mut deleted = 0;
        let mut batch = WriteBatch::default();
        for item in db.iterator_cf(self.cf(cf), IteratorMode::Start) {
            let (key, value) = item?;
            if expired(&value) {
                batch.delete_cf(self.cf(cf), key);
                deleted += 1;
                if batch.len() >= BATCH {
                    db.write(std::mem::take(&mut batch))?;
                }
            }
        }
        if !batch.is_empty() {
            db.write(batch)?;
        }
        if deleted > 0 {
            // A tombstone only hides an entry; compaction drops both from the files, also
            // where RocksDB would only have moved a file down a level.
            let mut options = CompactOptions::default();
            options.set_bottommost_level_compaction(BottommostLevelCompaction::ForceOptimized);
            db.compact_range_cf_opt(self.cf(cf), None::<&[u8]>, None::<&[u8]>, &options);
        }
        Ok(deleted)
    }

    /// The number of entries in the files and memory of `cf`, deletions included (a test's view of what
    /// is really stored, not of what reads answer).
    #[cfg(test)]
    pub(crate) fn stored_entries(&self, cf: &str) -> u64 {
        let files = self.inner.db.live_files().unwrap();
        let in_files: u64 = files
            .iter()
            .filter(|f| f.column_family_name == cf)
            .map(|f| f.num_entries)
            .sum();
        let in_memory = self
            .inner
            .db
            .property_int_value_cf(self.cf(cf), "rocksdb.num-entries-active-mem-table")
            .unwrap()
            .unwrap_or(0);
        in_files + in_memory
    }
}

/// What one [`Queue::expire_state`] deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Expired {
    /// Greylisting, rate and callahead entries past their time.
    pub state: u64,
    /// Sent Message-IDs past the retention.
    pub sent: u64,
}

/// The embedded default's [`State`]: values in this queue's `state` column family, sent
/// Message-IDs in its sent index (where delivery records them, in the attempt's own write),
/// counters in this process's memory. RocksDB answers in microseconds, so the calls answer on
/// the caller's task.
pub struct NodeState {
    queue: Queue,
    counters: MemoryCounters,
}

impl NodeState {
    pub fn new(queue: Queue) -> NodeState {
        NodeState {
            queue,
            counters: MemoryCounters::default(),
        }
    }

    fn get_now(&self, key: &Key, now: UnixTime) -> Result<Option<Vec<u8>>, QueueError> {
        match key {
            Key::SentId(hash) => Ok(self
                .queue
                .sent_message_id(*hash)?
                .map(|at| at.0.to_be_bytes().to_vec())),
            Key::AnySent => Ok((!self.queue.sent_message_ids_empty()?).then(|| b"1".to_vec())),
            other => self.queue.state_get(&other.bytes(), now),
        }
    }

    fn put_now(
        &self,
        key: &Key,
        value: &[u8],
        expires: UnixTime,
        now: UnixTime,
    ) -> Result<(), QueueError> {
        match key {
            // The sent index keeps the time sent; its retention is the sweep's.
            Key::SentId(hash) => self.queue.record_sent_message_id(*hash, now),
            // Implied by any sent Message-ID.
            Key::AnySent => Ok(()),
            other => self.queue.state_put(&other.bytes(), value, expires),
        }
    }
}

fn failed(e: QueueError) -> backstop_state::StateError {
    backstop_state::StateError::Failed(e.to_string())
}

impl State for NodeState {
    fn get<'a>(&'a self, key: &'a Key, now: UnixTime) -> Answer<'a, Option<Vec<u8>>> {
        Box::pin(std::future::ready(self.get_now(key, now).map_err(failed)))
    }

    fn put<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        expires: UnixTime,
        now: UnixTime,
    ) -> Answer<'a, ()> {
        Box::pin(std::future::ready(
            self.put_now(key, value, expires, now).map_err(failed),
        ))
    }

    fn add_in_window<'a>(
        &'a self,
        key: &'a Key,
        amount: u64,
        window: Duration,
        now: UnixTime,
    ) -> Answer<'a, u64> {
        Box::pin(std::future::ready(Ok(self
            .counters
            .add(key, amount, window, now))))
    }

    fn describe(&self) -> String {
        "this node (the queue's database and memory)".to_owned()
    }
}

#[cfg(test)]
mod tests;
