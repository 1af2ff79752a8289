//! The queue as the session's [`MessageSink`] (accepted messages, synced before the 250).

use std::future::Future;

use backstop_queue::{Queue, QueueError};
use backstop_session::{EnqueueFailure, Message, MessageSink};
use backstop_types::quarantine::{Owner, Reason};
use backstop_types::text::Escaped;
use backstop_types::{Clock as _, Domain, QueueId};
use tracing::{error, info};

/// Puts accepted messages into the queue.
pub(crate) struct QueueSink {
    pub queue: Queue,
    /// Whose recipients own an inbound verdict on their copy (see [`Reason::owner`]).
    pub local_domains: Vec<Domain>,
}

impl MessageSink for QueueSink {
    /// Stores the message in quarantine, each recipient's copy owned as [`Reason::owner`]
    /// says; then the copies of recipients who allow-listed the sender (for a verdict an
    /// allow-list lifts: [`Reason::allow_list_lifts`]) are released at once, into the queue.
    fn quarantine(
        &self,
        message: Message,
        reason: Reason,
    ) -> impl Future<Output = Result<QueueId, EnqueueFailure>> + Send {
        let queue = self.queue.clone();
        let owners: Vec<Owner> = message
            .envelope
            .recipients
            .iter()
            .map(|r| reason.owner(self.local_domains.contains(r.address.domain())))
            .collect();
        async move {
            let store = move || {
                let id =
                    queue.quarantine_new(&message.envelope, &message.body, &reason, &owners)?;
                if reason.allow_list_lifts() {
                    release_allowed(&queue, id, &message, &owners);
                }
                Ok::<_, QueueError>(id)
            };
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

/// Releases the copies of recipients who own theirs and allow-listed the sender. The message
/// is already durable in quarantine: a failure here leaves the copy held (logged), never lost.
fn release_allowed(queue: &Queue, id: QueueId, message: &Message, owners: &[Owner]) {
    let Some(sender) = message.envelope.sender.address().map(ToString::to_string) else {
        return;
    };
    let now = backstop_types::SystemClock.now();
    for (recipient, owner) in message.envelope.recipients.iter().zip(owners) {
        let address = recipient.address.to_string();
        if *owner != Owner::Recipient {
            continue;
        }
        let released = queue
            .sender_allowed(&address, &sender)
            .and_then(|allowed| match allowed {
                true => queue.quarantine_release(id, Some(&address), now).map(Some),
                false => Ok(None),
            });
        match released {
            Ok(None) => {}
            Ok(Some(r)) => {
                info!(queue_id = %id, to = %Escaped(&address), from = %Escaped(&sender), released_as = ?r.map(|r| r.queue_id.to_string()), "sender allow-listed by the recipient: released from quarantine")
            }
            Err(e) => {
                error!(queue_id = %id, to = %Escaped(&address), error = %e, "allow-listed release failed: the copy stays in quarantine")
            }
        }
    }
}
