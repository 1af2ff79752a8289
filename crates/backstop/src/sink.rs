//! The queue as the session's [`MessageSink`] (accepted messages, synced before the 250) and
//! as the policy's [`backstop_policy::Store`].

use std::future::Future;

use backstop_filter::error::StoreError;
use backstop_policy::Sent;
use backstop_queue::{Queue, QueueError};
use backstop_session::{EnqueueFailure, Message, MessageSink};
use backstop_types::{QueueId, UnixTime};
use tracing::error;

/// The policy's state in the queue's key-value area and sent-Message-ID index.
pub(crate) struct QueueStore(pub Queue);

impl backstop_policy::Store for QueueStore {
    fn get(&self, key: &[u8], now: UnixTime) -> Result<Option<Vec<u8>>, StoreError> {
        self.0
            .state_get(key, now)
            .map_err(|e| StoreError(e.to_string()))
    }

    fn put(&self, key: &[u8], value: &[u8], expires: UnixTime) -> Result<(), StoreError> {
        self.0
            .state_put(key, value, expires)
            .map_err(|e| StoreError(e.to_string()))
    }

    fn sent(&self, message_id: &str) -> Result<Sent, StoreError> {
        let hash = backstop_queue::message_id_hash(message_id);
        match (
            self.0.sent_message_ids_empty(),
            self.0.sent_message_id(hash),
        ) {
            (Err(e), _) | (_, Err(e)) => Err(StoreError(e.to_string())),
            (Ok(true), _) => Ok(Sent::NothingYet),
            (Ok(false), Ok(Some(_))) => Ok(Sent::Yes),
            (Ok(false), Ok(None)) => Ok(Sent::No),
        }
    }
}

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
                        _ => EnqueueFailure::Unavailable,
                    }
                })
        }
    }
}
