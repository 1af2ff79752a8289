//! The queue as the session's [`MessageSink`] (accepted messages, synced before the 250).

use std::future::Future;

use backstop_queue::{Queue, QueueError};
use backstop_session::{EnqueueFailure, Message, MessageSink};
use backstop_types::QueueId;
use tracing::error;

/// Puts accepted messages into the queue.
pub(crate) struct QueueSink {
    pub queue: Queue,
}

impl MessageSink for QueueSink {
    fn quarantine(
        &self,
        message: Message,
        reason: String,
    ) -> impl Future<Output = Result<QueueId, EnqueueFailure>> + Send {
        let queue = self.queue.clone();
        async move {
            let store = move || queue.quarantine_new(&message.envelope, &message.body, &reason);
            match tokio::task::spawn_blocking(store).await {
                Ok(Ok(id)) => Ok(id),
                Ok(Err(QueueError::DiskFull(e))) => {
                    error!(error = %e, "quarantine write failed");
                    Err(EnqueueFailure::StorageFull)
                }
                Ok(Err(e)) => {
                    error!(error = %e, "quarantine write failed");
                    Err(EnqueueFailure::Unavailable)
                }
                Err(e) => {
                    error!(error = %e, "quarantine write task failed");
                    Err(EnqueueFailure::Unavailable)
                }
            }
        }
    }

    fn enqueue(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<QueueId, EnqueueFailure>> + Send {
        let queue = self.queue.clone();
        async move {
            queue
                .enqueue(&message.envelope, message.body)
                .await
                .map_err(|e| {
                    error!(error = %e, "queue write failed");
                    match e {
                        QueueError::DiskFull(_) => EnqueueFailure::StorageFull,
                        QueueError::Spool(_, e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                            EnqueueFailure::StorageFull
                        }
                        _ => EnqueueFailure::Unavailable,
                    }
                })
        }
    }
}
