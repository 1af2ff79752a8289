//! The file a session writes a large message into as it arrives ([`Output::Spool`]): created
//! in the queue's `spool/incoming/` directory (0600, never over an existing file), written
//! before more input is read, and removed when the transaction is over unless the queue took
//! it (the accept renames it into place). What a crash leaves there is removed at the next
//! start.
//!
//! [`Output::Spool`]: backstop_session::Output::Spool

use std::io;
use std::path::PathBuf;

use backstop_types::Body;
use tokio::io::AsyncWriteExt;
use tracing::error;

/// The spool file of the transaction under way.
pub(crate) struct SpoolFile {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    /// A write failed (a full disk): the message is refused for now at its end.
    failed: bool,
}

impl SpoolFile {
    /// Appends `bytes` to the file at `path` (creating it when `create`, in place of `slot`'s
    /// file of an earlier transaction).
    /// A new file is started only while the disk has room for `max_size` and half again
    /// (Postfix's rule for its queue: 1.5 × `message_size_limit`), so that clients sending
    /// large messages at once cannot fill the disk the queue's database needs.
    pub(crate) async fn write(
        slot: &mut Option<SpoolFile>,
        path: PathBuf,
        bytes: &[u8],
        create: bool,
        max_size: u64,
    ) {
        if create || slot.as_ref().is_none_or(|s| s.path != path) {
            let room = free_space(&path).await;
            let wanted = max_size.saturating_add(max_size / 2);
            let file = match room {
                Ok(free) if free < wanted => Err(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("{free} octets free, {wanted} wanted"),
                )),
                _ => {
                    tokio::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&path)
                        .await
                }
            };
            let failed = file.is_err();
            if let Err(e) = &file {
                error!(file = %path.display(), error = %e, "cannot create the spool file: the message will be refused for now");
            }
            *slot = Some(SpoolFile {
                path,
                file: file.ok(),
                failed,
            });
        }
        let Some(spool) = slot.as_mut() else { return };
        let Some(file) = spool.file.as_mut() else {
            return;
        };
        if spool.failed {
            return;
        }
        let written: io::Result<()> = async {
            file.write_all(bytes).await?;
            file.flush().await
        }
        .await;
        if let Err(e) = written {
            error!(file = %spool.path.display(), error = %e, "spool write failed: the message will be refused for now");
            spool.failed = true;
        }
    }

    /// Whether `body` is spooled into a file whose writing failed (or that this session did
    /// not write): such a message must not be taken.
    pub(crate) fn broken(slot: &Option<SpoolFile>, body: &Body) -> bool {
        match body.tail() {
            None => false,
            Some(tail) => !slot
                .as_ref()
                .is_some_and(|s| s.path == tail.path && !s.failed && s.file.is_some()),
        }
    }
}

/// Octets free for unprivileged use on the file system of `path`'s directory.
async fn free_space(path: &std::path::Path) -> io::Result<u64> {
    let dir = path.parent().unwrap_or(path).to_owned();
    tokio::task::spawn_blocking(move || {
        let stat = rustix::fs::statvfs(&dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e)))
}

impl Drop for SpoolFile {
    /// The transaction is over: the file goes, unless the queue has taken it (renamed it away).
    fn drop(&mut self) {
        self.file.take();
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                error!(file = %self.path.display(), error = %e, "cannot remove the spool file; removed at the next start")
            }
        }
    }
}
