//! [`Queue`]: the RocksDB database, the durable accept path with group commit, and reading.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use backstop_types::{Body, Envelope, QueueId};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use tokio::sync::oneshot;

use crate::record::{self, Entry, RecordError};

pub(crate) const CF_MESSAGES: &str = "messages";
pub(crate) const CF_ENTRIES: &str = "envelopes";
pub(crate) const CF_SCHEDULE: &str = "schedule";
pub(crate) const CF_DUE: &str = "due";
pub(crate) const CF_QUARANTINE: &str = "quarantine";
pub(crate) const CF_SENT_IDS: &str = "sent_message_ids";
pub(crate) const CF_STATE: &str = "state";
pub(crate) const CF_DAMAGED: &str = "damaged";
const COLUMN_FAMILIES: [&str; 8] = [
    CF_MESSAGES,
    CF_ENTRIES,
    CF_SCHEDULE,
    CF_DUE,
    CF_QUARANTINE,
    CF_SENT_IDS,
    CF_STATE,
    CF_DAMAGED,
];

/// At most this many accepts share one fsync; more wait for the next.
const MAX_GROUP: usize = 512;

/// A queue failure. For `enqueue`, every one of them means the message is *not* accepted.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    /// The disk (or the file system's quota) is full: try again later (452 4.3.1).
    #[error("queue database: disk full: {0}")]
    DiskFull(rocksdb::Error),
    #[error("queue database: {0}")]
    Db(rocksdb::Error),
    #[error("queue record of {id}: {source}")]
    Record { id: QueueId, source: RecordError },
    #[error("cannot start the queue writer thread: {0}")]
    WriterThread(std::io::Error),
    #[error("the queue writer has stopped")]
    WriterGone,
    #[error("the queue is open read-only")]
    ReadOnly,
    /// The spool directory or a spool file (a large message's body) failed.
    #[error("queue spool {0}: {1}")]
    Spool(String, std::io::Error),
}

impl From<rocksdb::Error> for QueueError {
    fn from(e: rocksdb::Error) -> QueueError {
        // RocksDB reports ENOSPC as an IO error whose text carries the OS message.
        if e.as_ref().contains("No space left on device") {
            QueueError::DiskFull(e)
        } else {
            QueueError::Db(e)
        }
    }
}

/// A message as stored.
#[derive(Debug)]
pub struct StoredMessage {
    pub id: QueueId,
    pub entry: Entry,
    pub body: Body,
}

/// The queue. Cheap to clone; all clones share one database and one writer thread.
#[derive(Clone)]
pub struct Queue {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) db: Arc<DB>,
    /// Large messages' bodies (see [`crate::spool`]): `spool` in the queue's directory.
    pub(crate) spool: PathBuf,
    /// `None` for a read-only queue.
    writer: Option<mpsc::Sender<Accept>>,
    thread: Option<thread::JoinHandle<()>>,
    last_id: AtomicU64,
    /// Serialises read-modify-write of existing entries (leases, attempts, admin commands).
    /// Accepts only add new keys and do not take it.
    pub(crate) update: Mutex<()>,
    /// How far the write-ahead log is synced, for writes made durable after the update lock
    /// is released (see [`Queue::write_unsynced`]).
    pub(crate) wal: Mutex<WalSync>,
    /// Schedule keys deleted since the schedule was last compacted: each is a tombstone that
    /// the scan for due messages steps over until a compaction drops it.
    pub(crate) schedule_deletes: AtomicU64,
}

/// The write-ahead log's sync state: every write up to sequence number `synced` is on disk.
#[derive(Default)]
pub(crate) struct WalSync {
    synced: u64,
    /// Syncs done so far (for tests).
    pub(crate) syncs: u64,
}

/// A write that is in the database but not yet known to be on disk: pass it to
/// [`Queue::sync_wal`].
#[must_use = "a write is durable only after sync_wal"]
pub(crate) struct Unsynced(u64);

impl Drop for Inner {
    /// The last handle stops the writer and waits for it, so the database is closed before
    /// the process can exit: RocksDB aborts if it is torn down under a running thread.
    fn drop(&mut self) {
        self.writer.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One message waiting for the group commit.
struct Accept {
    id: QueueId,
    entry: Vec<u8>,
    /// The body's head; with the spooled tail's length when it has one (already in place).
    head: Vec<u8>,
    spooled: Option<u64>,
    due: u64,
    done: oneshot::Sender<Result<(), rocksdb::Error>>,
}

impl Queue {
    /// Opens (creating if needed) the queue in directory `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<Queue, QueueError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|source| QueueError::Open {
            path: path.display().to_string(),
            source,
        })?;
        let db = Arc::new(db);
        let last_id = AtomicU64::new(highest_id(&db)?.map_or(0, |id| id.0));
        let (tx, rx) = mpsc::channel();
        let writer_db = Arc::clone(&db);
        let thread = thread::Builder::new()
            .name("queue-writer".into())
            .spawn(move || group_commit(&writer_db, &rx))
            .map_err(QueueError::WriterThread)?;
        let queue = Queue {
            inner: Arc::new(Inner {
                db,
                spool: path.join("spool"),
                writer: Some(tx),
                thread: Some(thread),
                last_id,
                update: Mutex::new(()),
                wal: Mutex::default(),
                schedule_deletes: AtomicU64::new(0),
            }),
        };
        let removed = queue.sweep_spool()?;
        if removed > 0 {
            tracing::info!(
                files = removed,
                "spool: removed what an interrupted run left"
            );
        }
        Ok(queue)
    }

    /// Opens an existing queue read-only (for inspection while a server may be running).
    pub fn open_read_only(path: &Path) -> Result<Queue, QueueError> {
        let db = DB::open_cf_for_read_only(&Options::default(), path, COLUMN_FAMILIES, false)
            .map_err(|source| QueueError::Open {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Queue {
            inner: Arc::new(Inner {
                db: Arc::new(db),
                spool: path.join("spool"),
                writer: None,
                thread: None,
                last_id: AtomicU64::new(0),
                update: Mutex::new(()),
                wal: Mutex::default(),
                schedule_deletes: AtomicU64::new(0),
            }),
        })
    }

    /// Stores a message durably: when this returns `Ok`, body and entry are synced to disk and
    /// the message is scheduled for delivery at its arrival time. Only then may the client hear
    /// `250`.
    ///
    /// A spooled body's file is synced and moved into place first (on the blocking pool); if
    /// the record then cannot be written, the file is removed again.
    pub async fn enqueue(
        &self,
        envelope: &Envelope,
        body: impl Into<Body>,
    ) -> Result<QueueId, QueueError> {
        let body = body.into();
        let writer = self.inner.writer.as_ref().ok_or(QueueError::ReadOnly)?;
        let id = self.next_id();
        let size = body.len();
        let (head, tail) = body.into_parts();
        let spooled = match tail {
            None => None,
            Some(tail) => {
                let queue = self.clone();
                let placed = tokio::task::spawn_blocking(move || queue.take_spooled(id, &tail))
                    .await
                    .map_err(|e| {
                        QueueError::Spool(e.to_string(), std::io::Error::other("task failed"))
                    })?;
                Some(
                    placed
                        .map_err(|e| QueueError::Spool(id.to_string(), e))?
                        .len,
                )
            }
        };
        let (done, wait) = oneshot::channel();
        let accepted = async {
            writer
                .send(Accept {
                    id,
                    entry: record::encode_entry(&Entry::new(envelope.clone(), size)),
                    head,
                    spooled,
                    due: envelope.arrival.0,
                    done,
                })
                .map_err(|_| QueueError::WriterGone)?;
            wait.await.map_err(|_| QueueError::WriterGone)??;
            Ok(id)
        }
        .await;
        // A failed synced write may still be in the log and replayed at the next start: its
        // file stays, and the start's sweep removes it if no record names it.
        accepted
    }

    /// Every message in the queue, oldest first. Records that cannot be read are moved aside
    /// (see [`Queue::damaged`]) and left out.
    pub fn list(&self) -> Result<Vec<(QueueId, Entry)>, QueueError> {
        let mut out = Vec::new();
        let mut damaged = Vec::new();
        for item in self
            .inner
            .db
            .iterator_cf(self.cf(CF_ENTRIES), IteratorMode::Start)
        {
            let (key, value) = item?;
            let id = id_from_key(&key);
            match record::decode_entry(&value) {
                Ok(entry) => out.push((id, entry)),
                Err(source) => damaged.push((id, source)),
            }
        }
        for (id, source) in damaged {
            self.move_aside(id, &source)?;
        }
        Ok(out)
    }

    /// Up to `limit` messages after queue id `after` that `admits` lets through, oldest
    /// first, and the cursor of the next page. Only records are read, never bodies; records
    /// that cannot be read are left out (moved aside by [`Queue::list`]).
    pub fn list_page(
        &self,
        after: Option<QueueId>,
        limit: usize,
        admits: impl Fn(&Entry) -> bool,
    ) -> Result<crate::quarantine::Page<(QueueId, Entry)>, QueueError> {
        let start = after.map_or(0, |a| a.0.saturating_add(1)).to_be_bytes();
        let mut items = Vec::new();
        let mut last = None;
        for item in self.inner.db.iterator_cf(
            self.cf(CF_ENTRIES),
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        ) {
            let (key, value) = item?;
            let id = id_from_key(&key);
            if items.len() == limit.max(1) {
                return Ok(crate::quarantine::Page { items, next: last });
            }
            last = Some(id);
            if let Ok(entry) = record::decode_entry(&value) {
                if admits(&entry) {
                    items.push((id, entry));
                }
            }
        }
        Ok(crate::quarantine::Page { items, next: None })
    }

    /// One message with its body, if it is in the queue.
    pub fn message(&self, id: QueueId) -> Result<Option<StoredMessage>, QueueError> {
        let Some(entry) = self.entry(id)? else {
            return Ok(None);
        };
        let body = self.stored_body(id)?;
        Ok(Some(StoredMessage { id, entry, body }))
    }

    /// The body of queued message `id` (empty if it has none).
    pub(crate) fn stored_body(&self, id: QueueId) -> Result<Body, QueueError> {
        let db = &self.inner.db;
        let head = db
            .get_cf(self.cf(CF_MESSAGES), id.to_be_bytes())?
            .unwrap_or_default();
        let marker = db.get_cf(
            self.cf(CF_MESSAGES),
            crate::spool::marker(id, crate::spool::QUEUED_MARKER),
        )?;
        self.body_from(id, head, marker)
    }

    /// Keys of records that could not be decoded and were moved aside, with the reason.
    pub fn damaged(&self) -> Result<Vec<(String, String)>, QueueError> {
        let mut out = Vec::new();
        for item in self
            .inner
            .db
            .iterator_cf(self.cf(CF_DAMAGED), IteratorMode::Start)
        {
            let (key, value) = item?;
            out.push((
                String::from_utf8_lossy(&key).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            ));
        }
        Ok(out)
    }

    /// The entry of `id`; a damaged one is moved aside and reads as absent.
    pub(crate) fn entry(&self, id: QueueId) -> Result<Option<Entry>, QueueError> {
        match self.decoded_entry(id)? {
            None => Ok(None),
            Some(Ok(entry)) => Ok(Some(entry)),
            Some(Err(source)) => {
                self.move_aside(id, &source)?;
                Ok(None)
            }
        }
    }

    /// The stored entry of `id` as decoded, `None` when there is none.
    pub(crate) fn decoded_entry(
        &self,
        id: QueueId,
    ) -> Result<Option<Result<Entry, RecordError>>, QueueError> {
        let bytes = self
            .inner
            .db
            .get_cf(self.cf(CF_ENTRIES), id.to_be_bytes())?;
        Ok(bytes.map(|b| record::decode_entry(&b)))
    }

    /// A record that cannot be decoded must not stop the server: its raw bytes go to the
    /// `damaged` column family (keyed by id, with the reason), out of the schedule, and the
    /// server carries on. Nothing is deleted, so an administrator can still recover it.
    fn move_aside(&self, id: QueueId, source: &RecordError) -> Result<(), QueueError> {
        tracing::error!(queue_id = %id, key = %hex(&id.to_be_bytes()), error = %source,
            "undecodable queue record moved aside");
        if self.inner.writer.is_none() {
            return Ok(());
        }
        let _guard = self.lock();
        let key = id.to_be_bytes();
        let db = &self.inner.db;
        let mut batch = WriteBatch::default();
        let reason = format!("{source}");
        if let Some(raw) = db.get_cf(self.cf(CF_ENTRIES), key)? {
            batch.put_cf(self.cf(CF_DAMAGED), format!("entry:{id}"), &reason);
            batch.put_cf(self.cf(CF_DAMAGED), format!("entry:{id}:raw"), raw);
        }
        if let Some(body) = db.get_cf(self.cf(CF_MESSAGES), key)? {
            batch.put_cf(self.cf(CF_DAMAGED), format!("entry:{id}:body"), body);
        }
        batch.delete_cf(self.cf(CF_ENTRIES), key);
        batch.delete_cf(self.cf(CF_MESSAGES), key);
        self.set_due(&mut batch, id, None)?;
        self.write_synced(batch)
    }

    /// Ids are microseconds since the epoch, bumped to stay unique and increasing even if the
    /// clock steps back (the highest id on disk is the floor after a restart).
    pub(crate) fn next_id(&self) -> QueueId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let last_id = &self.inner.last_id;
        let mut last = last_id.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match last_id.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return QueueId(next),
                Err(actual) => last = actual,
            }
        }
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        cf(&self.inner.db, name)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ()> {
        // The guard protects no data of its own; a panic while holding it leaves nothing broken.
        self.inner
            .update
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `batch` without waiting for the disk, for a caller that holds the update lock:
    /// it releases the lock and then waits in [`Queue::sync_wal`], so that the syncs of
    /// concurrent writers are shared instead of queueing behind the lock one by one.
    pub(crate) fn write_unsynced(&self, batch: WriteBatch) -> Result<Unsynced, QueueError> {
        if self.inner.writer.is_none() {
            return Err(QueueError::ReadOnly);
        }
        self.inner.db.write(batch)?;
        Ok(Unsynced(self.inner.db.latest_sequence_number()))
    }

    /// Returns once `write` is on disk: at once when a sync since covered it, otherwise after
    /// syncing the log, which covers every write made so far (group commit).
    pub(crate) fn sync_wal(&self, write: Unsynced) -> Result<(), QueueError> {
        let mut wal = self
            .inner
            .wal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if wal.synced >= write.0 {
            return Ok(());
        }
        // Everything up to here is in the log file; the sync takes it all to disk.
        let upto = self.inner.db.latest_sequence_number();
        self.inner.db.flush_wal(true)?;
        wal.synced = wal.synced.max(upto);
        wal.syncs += 1;
        Ok(())
    }

    pub(crate) fn write_synced(&self, batch: WriteBatch) -> Result<(), QueueError> {
        if self.inner.writer.is_none() {
            return Err(QueueError::ReadOnly);
        }
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.inner.db.write_opt(batch, &sync)?;
        Ok(())
    }

    /// Moves `id` in the schedule to `due` (Unix seconds), or takes it out with `None`.
    pub(crate) fn set_due(
        &self,
        batch: &mut WriteBatch,
        id: QueueId,
        due: Option<u64>,
    ) -> Result<(), QueueError> {
        let key = id.to_be_bytes();
        if let Some(old) = self.inner.db.get_cf(self.cf(CF_DUE), key)? {
            if let Ok(old) = <[u8; 8]>::try_from(old.as_slice()) {
                batch.delete_cf(
                    self.cf(CF_SCHEDULE),
                    schedule_key(u64::from_be_bytes(old), id),
                );
                self.inner.schedule_deletes.fetch_add(1, Ordering::Relaxed);
            }
        }
        match due {
            Some(due) => {
                batch.put_cf(self.cf(CF_SCHEDULE), schedule_key(due, id), []);
                batch.put_cf(self.cf(CF_DUE), key, due.to_be_bytes());
            }
            None => batch.delete_cf(self.cf(CF_DUE), key),
        }
        Ok(())
    }
}

/// `due ++ id`, both big-endian, so the schedule iterates in due order.
pub(crate) fn schedule_key(due: u64, id: QueueId) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&due.to_be_bytes());
    key[8..].copy_from_slice(&id.to_be_bytes());
    key
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    // Every column family is created at open; a missing one is a bug, not a runtime state.
    db.cf_handle(name)
        .unwrap_or_else(|| panic!("column family {name} was created at open"))
}

fn highest_id(db: &DB) -> Result<Option<QueueId>, QueueError> {
    let mut highest = None;
    for name in [CF_ENTRIES, CF_QUARANTINE] {
        if let Some(item) = db.iterator_cf(cf(db, name), IteratorMode::End).next() {
            let id = id_from_key(&item?.0);
            highest = highest.max(Some(id));
        }
    }
    Ok(highest)
}

pub(crate) fn id_from_key(key: &[u8]) -> QueueId {
    let mut a = [0; 8];
    let n = key.len().min(8);
    a[..n].copy_from_slice(&key[..n]);
    QueueId::from_be_bytes(a)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The writer thread: takes every accept that is waiting, writes them all in one synced batch,
/// and answers each. While one fsync runs, the next group gathers in the channel.
fn group_commit(db: &DB, rx: &mpsc::Receiver<Accept>) {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let (messages, entries, schedule, due) = (
        cf(db, CF_MESSAGES),
        cf(db, CF_ENTRIES),
        cf(db, CF_SCHEDULE),
        cf(db, CF_DUE),
    );
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(accept) => group.push(accept),
                Err(_) => break,
            }
        }
        let mut batch = WriteBatch::default();
        for a in &group {
            let key = a.id.to_be_bytes();
            batch.put_cf(messages, key, &a.head);
            if let Some(len) = a.spooled {
                batch.put_cf(
                    messages,
                    crate::spool::marker(a.id, crate::spool::QUEUED_MARKER),
                    len.to_be_bytes(),
                );
            }
            batch.put_cf(entries, key, &a.entry);
            batch.put_cf(schedule, schedule_key(a.due, a.id), []);
            batch.put_cf(due, key, a.due.to_be_bytes());
        }
        let result = db.write_opt(batch, &sync);
        if let Err(e) = &result {
            tracing::error!(error = %e, messages = group.len(), "queue write failed");
        }
        for a in group {
            // A session that went away no longer waits for its answer; nothing to do then.
            let _ = a.done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests;
