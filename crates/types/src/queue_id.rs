//! The name of a message in the queue.

use std::fmt;
use std::str::FromStr;

/// A queue id: 64 bits, printed as 16 upper-case hex digits.
///
/// The queue hands them out in increasing order (microseconds of arrival, made unique), so ids
/// sort by arrival and read well in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(pub u64);

impl QueueId {
    pub fn to_be_bytes(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }

    pub fn from_be_bytes(bytes: [u8; 8]) -> QueueId {
        QueueId(u64::from_be_bytes(bytes))
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// The text is not 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a queue id is 16 hex digits, not {0:?}")]
pub struct BadQueueId(String);

impl FromStr for QueueId {
    type Err = BadQueueId;

    fn from_str(s: &str) -> Result<QueueId, BadQueueId> {
        if s.len() != 16 {
            return Err(BadQueueId(s.to_owned()));
        }
        u64::from_str_radix(s, 16)
            .map(QueueId)
            .map_err(|_| BadQueueId(s.to_owned()))
    }
}
