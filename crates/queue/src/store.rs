//! [`Queue`]: the RocksDB database, and the durable accept path with group commit.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use backstop_types::{Envelope, QueueId, UnixTime};
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use tokio::sync::oneshot;

use crate::record::{self, RecordError};

const CF_MESSAGES: &str = "messages";
const CF_ENVELOPES: &str = "envelopes";
const CF_SCHEDULE: &str = "schedule";
const COLUMN_FAMILIES: [&str; 3] = [CF_MESSAGES, CF_ENVELOPES, CF_SCHEDULE];

/// At most this many accepts share one fsync; more wait for the next.
const MAX_GROUP: usize = 512;

/// A queue failure. Every one of them means the message is *not* accepted.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database at {path}: {source}")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error("queue database: {0}")]
    Db(#[from] rocksdb::Error),
    #[error("queue record of {id}: {source}")]
    Record { id: QueueId, source: RecordError },
    #[error("cannot start the queue writer thread: {0}")]
    WriterThread(std::io::Error),
    #[error("the queue writer has stopped")]
    WriterGone,
}

/// A message as stored.
#[derive(Debug)]
pub struct StoredMessage {
    pub id: QueueId,
    pub envelope: Envelope,
    pub body: Vec<u8>,
}

/// The queue. Cheap to clone; all clones share one database and one writer thread.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<DB>,
    /// `None` for a read-only queue.
    writer: Option<mpsc::Sender<Accept>>,
    thread: Option<thread::JoinHandle<()>>,
    last_id: AtomicU64,
}

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
    envelope: Vec<u8>,
    body: Vec<u8>,
    due: UnixTime,
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
        Ok(Queue {
            inner: Arc::new(Inner {
                db,
                writer: Some(tx),
                thread: Some(thread),
                last_id,
            }),
        })
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
                writer: None,
                thread: None,
                last_id: AtomicU64::new(0),
            }),
        })
    }

    /// Stores a message durably: when this returns `Ok`, body and envelope are synced to disk
    /// and the message is scheduled for delivery now. Only then may the client hear `250`.
    pub async fn enqueue(&self, envelope: &Envelope, body: Vec<u8>) -> Result<QueueId, QueueError> {
        let writer = self.inner.writer.as_ref().ok_or(QueueError::WriterGone)?;
        let id = self.next_id();
        let (done, wait) = oneshot::channel();
        writer
            .send(Accept {
                id,
                envelope: record::encode_envelope(envelope),
                body,
                due: envelope.arrival,
                done,
            })
            .map_err(|_| QueueError::WriterGone)?;
        wait.await.map_err(|_| QueueError::WriterGone)??;
        Ok(id)
    }

    /// Every message in the queue, oldest first.
    pub fn list(&self) -> Result<Vec<(QueueId, Envelope)>, QueueError> {
        let cf = self.cf(CF_ENVELOPES);
        let mut out = Vec::new();
        for item in self.inner.db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            let id = id_from_key(&key);
            let envelope = record::decode_envelope(&value)
                .map_err(|source| QueueError::Record { id, source })?;
            out.push((id, envelope));
        }
        Ok(out)
    }

    /// One message with its body, if it is in the queue.
    pub fn message(&self, id: QueueId) -> Result<Option<StoredMessage>, QueueError> {
        let key = id.to_be_bytes();
        let Some(envelope) = self.inner.db.get_cf(self.cf(CF_ENVELOPES), key)? else {
            return Ok(None);
        };
        let envelope = record::decode_envelope(&envelope)
            .map_err(|source| QueueError::Record { id, source })?;
        let body = self
            .inner
            .db
            .get_cf(self.cf(CF_MESSAGES), key)?
            .unwrap_or_default();
        Ok(Some(StoredMessage { id, envelope, body }))
    }

    /// Ids are microseconds since the epoch, bumped to stay unique and increasing even if the
    /// clock steps back (the highest id on disk is the floor after a restart).
    fn next_id(&self) -> QueueId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let mut last = self.inner.last_id.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.inner.last_id.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return QueueId(next),
                Err(actual) => last = actual,
            }
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // The column families are created at open; a missing one is a bug, not a runtime state.
        self.inner
            .db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} was created at open"))
    }
}

fn highest_id(db: &DB) -> Result<Option<QueueId>, QueueError> {
    let cf = db
        .cf_handle(CF_ENVELOPES)
        .unwrap_or_else(|| panic!("column family {CF_ENVELOPES} was created at open"));
    match db.iterator_cf(cf, IteratorMode::End).next() {
        Some(item) => Ok(Some(id_from_key(&item?.0))),
        None => Ok(None),
    }
}

fn id_from_key(key: &[u8]) -> QueueId {
    let mut a = [0; 8];
    let n = key.len().min(8);
    a[..n].copy_from_slice(&key[..n]);
    QueueId::from_be_bytes(a)
}

/// The writer thread: takes every accept that is waiting, writes them all in one synced batch,
/// and answers each. While one fsync runs, the next group gathers in the channel.
fn group_commit(db: &DB, rx: &mpsc::Receiver<Accept>) {
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    let (messages, envelopes, schedule) = (
        db.cf_handle(CF_MESSAGES),
        db.cf_handle(CF_ENVELOPES),
        db.cf_handle(CF_SCHEDULE),
    );
    let (Some(messages), Some(envelopes), Some(schedule)) = (messages, envelopes, schedule) else {
        tracing::error!("queue column families missing; the writer cannot run");
        return;
    };
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
            batch.put_cf(messages, key, &a.body);
            batch.put_cf(envelopes, key, &a.envelope);
            let mut due = a.due.0.to_be_bytes().to_vec();
            due.extend_from_slice(&key);
            batch.put_cf(schedule, due, []);
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
