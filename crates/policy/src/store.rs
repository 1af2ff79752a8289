//! The site's state as the policy reads it ([`State`]: this node's queue and memory, or Redis):
//! the sent-Message-ID index of bounce provenance. Greylisting, callahead answers and rate
//! counters are read where they are checked.

use backstop_state::{message_id_hash, Key, State, StateError};
use backstop_types::UnixTime;

/// What the sent-Message-ID index says about one Message-ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Yes,
    No,
    /// We have never sent anything: there is nothing to compare with.
    NothingYet,
}

/// Whether we sent a message with this Message-ID.
pub(crate) async fn sent(
    state: &dyn State,
    message_id: &str,
    now: UnixTime,
) -> Result<Sent, StateError> {
    let key = Key::SentId(message_id_hash(message_id));
    if state.get(&key, now).await?.is_some() {
        return Ok(Sent::Yes);
    }
    Ok(match state.get(&Key::AnySent, now).await? {
        Some(_) => Sent::No,
        None => Sent::NothingYet,
    })
}
