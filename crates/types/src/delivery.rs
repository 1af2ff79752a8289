//! The delivery state of each recipient of a queued message: what the delivery agent records
//! and the DSN generator reads.

use crate::{EnhancedStatus, UnixTime};

/// A reply from a remote server (or one made up locally, like an expiry), as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReply {
    pub code: u16,
    pub status: Option<EnhancedStatus>,
    pub text: String,
}

/// The reply as it was given: `550 5.1.1 text`, or `550 text` without an enhanced status.
impl std::fmt::Display for RemoteReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(f, "{} {status} {}", self.code, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

/// One delivery attempt's result for a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The host that answered (`mx1.example.org[192.0.2.25]`), when one did.
    pub remote_host: Option<String>,
    pub reply: RemoteReply,
}

/// Where a recipient stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientState {
    /// Still to be delivered: at `next_attempt`, after `attempts` tries so far.
    Pending {
        attempts: u32,
        next_attempt: UnixTime,
        last: Option<Attempt>,
    },
    Delivered {
        at: UnixTime,
        last: Attempt,
    },
    /// Failed for good: a permanent reply, or the queue lifetime ran out.
    Failed {
        at: UnixTime,
        last: Attempt,
    },
}

impl RecipientState {
    pub fn is_pending(&self) -> bool {
        matches!(self, RecipientState::Pending { .. })
    }
}

/// What one attempt for one recipient came to, as the delivery agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered(Attempt),
    /// 4xx, a network error, a DNS timeout: try again later.
    Transient(Attempt),
    /// 5xx: do not try again.
    Permanent(Attempt),
}
