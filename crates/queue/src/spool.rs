//! Spooled bodies: a message larger than the spool threshold keeps only its head (the header
//! section) in the database; the rest is a file `spool/<queue id>` in the queue's directory.
//!
//! The listener writes a message as it arrives into `spool/incoming/`. The accept moves it
//! into place: the file is synced, renamed to its queue id and the directory synced, and only
//! then is the record written (synced, as every accept). So a crash leaves at most a file no
//! record names, which the next start removes ([`Queue::sweep_spool`]); never a record whose
//! body is missing. A record names its file by a marker key beside the head: `messages`
//! `id ++ 's'` and `quarantine` `id ++ 2`, each holding the file's length. A message moves
//! between queue and quarantine with its marker; the file is removed after the write that
//! deletes the last marker.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use backstop_types::{Body, QueueId, Spooled};
use rocksdb::WriteBatch;

use crate::store::{Queue, QueueError, CF_MESSAGES, CF_QUARANTINE};

/// The kind byte of a spool marker after the queue id: in `messages` and in `quarantine`.
pub(crate) const QUEUED_MARKER: u8 = b's';
pub(crate) const QUARANTINE_MARKER: u8 = 2;

pub(crate) fn marker(id: QueueId, kind: u8) -> [u8; 9] {
    let mut k = [0; 9];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8] = kind;
    k
}

/// The file of queue id `id` in spool directory `dir`.
pub(crate) fn file_of(dir: &Path, id: QueueId) -> PathBuf {
    dir.join(id.to_string())
}

impl Queue {
    /// Where the listener writes messages as they arrive; on the queue's file system, so the
    /// accept can rename them into place.
    pub fn incoming_dir(&self) -> PathBuf {
        self.inner.spool.join("incoming")
    }

    /// Moves an arriving message's spooled tail into place as `id`'s file, synced; the record
    /// that names it is written after this.
    pub(crate) fn take_spooled(&self, id: QueueId, tail: &Spooled) -> io::Result<Spooled> {
        let file = File::open(&tail.path)?;
        let len = file.metadata()?.len();
        if len != tail.len {
            return Err(backstop_types::body::short(&tail.path, len, tail.len));
        }
        file.sync_all()?;
        let to = file_of(&self.inner.spool, id);
        std::fs::rename(&tail.path, &to)?;
        File::open(&self.inner.spool)?.sync_all()?;
        Ok(tail.moved_to(&to))
    }

    /// The body of `id` from its head and, when `marker` holds a length, its spool file.
    pub(crate) fn body_from(
        &self,
        id: QueueId,
        head: Vec<u8>,
        marker: Option<Vec<u8>>,
    ) -> Result<Body, QueueError> {
        match marker {
            None => Ok(Body::new(head)),
            Some(len) => {
                let len = <[u8; 8]>::try_from(len.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| QueueError::Record {
                        id,
                        source: crate::record::RecordError::Truncated,
                    })?;
                Ok(Body::spooled(
                    head,
                    Spooled {
                        path: file_of(&self.inner.spool, id),
                        len,
                    },
                ))
            }
        }
    }

    /// Writes `body`'s head under `head_key` in `cf` and, when it is spooled, its marker.
    pub(crate) fn put_body(
        &self,
        batch: &mut WriteBatch,
        cf: &str,
        head_key: &[u8],
        marker_key: [u8; 9],
        body: &Body,
    ) {
        batch.put_cf(self.cf(cf), head_key, body.head());
        match body.tail() {
            Some(tail) => batch.put_cf(self.cf(cf), marker_key, tail.len.to_be_bytes()),
            None => batch.delete_cf(self.cf(cf), marker_key),
        }
    }

    /// Removes `id`'s spool file after the write that deleted its last marker. A failure is
    /// logged: the next start removes the file.
    pub(crate) fn unlink_spooled(&self, id: QueueId) {
        let path = file_of(&self.inner.spool, id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(queue_id = %id, error = %e, "cannot remove the spool file; removed at the next start")
            }
        }
    }

    /// At start, before anything is received: removes what a crash left in the spool, every
    /// file in `incoming/` (no session is under way) and every file no record names.
    /// Returns how many files were removed.
    pub(crate) fn sweep_spool(&self) -> Result<usize, QueueError> {
        let io = |e: io::Error| QueueError::Spool(self.inner.spool.display().to_string(), e);
        let incoming = self.incoming_dir();
        std::fs::create_dir_all(&incoming).map_err(io)?;
        let mut removed = 0;
        for entry in std::fs::read_dir(&incoming).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if !path.is_file() {
                tracing::warn!(path = %path.display(), "not a spool file, left alone");
                continue;
            }
            std::fs::remove_file(path).map_err(io)?;
            removed += 1;
        }
        let db = &self.inner.db;
        for entry in std::fs::read_dir(&self.inner.spool).map_err(io)? {
            let entry = entry.map_err(io)?;
            if entry.path() == incoming {
                continue;
            }
            if !entry.path().is_file() {
                tracing::warn!(path = %entry.path().display(), "not a spool file, left alone");
                continue;
            }
            let named = match entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<QueueId>().ok())
            {
                Some(id) => {
                    db.get_cf(self.cf(CF_MESSAGES), marker(id, QUEUED_MARKER))?
                        .is_some()
                        || db
                            .get_cf(self.cf(CF_QUARANTINE), marker(id, QUARANTINE_MARKER))?
                            .is_some()
                }
                None => false,
            };
            if !named {
                tracing::info!(file = %entry.path().display(), "spool file without a record removed");
                std::fs::remove_file(entry.path()).map_err(io)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The spool files there are (for tests and `queue` statistics).
    pub fn spool_files(&self) -> Result<Vec<PathBuf>, QueueError> {
        let io = |e: io::Error| QueueError::Spool(self.inner.spool.display().to_string(), e);
        let mut out = Vec::new();
        for dir in [self.inner.spool.clone(), self.incoming_dir()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.map_err(io)?.path();
                if path.is_file() {
                    out.push(path);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}
