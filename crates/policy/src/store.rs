//! Where the policy keeps what outlives a session: greylisting state, callahead answers, and
//! the index of Message-IDs we sent (for bounce provenance). The binary supplies it (the
//! queue's key-value area today).

use backstop_filter::error::StoreError;
use backstop_filter::greylist::GreyStore;
use backstop_types::UnixTime;

/// Values with an expiry, and the sent-Message-ID index. Errors carry the store's own words,
/// for a log line; a caller that gets one answers 4xx or goes on as its module says.
pub trait Store: Send + Sync + 'static {
    /// The value of `key`, unless it expired before `now`.
    fn get(&self, key: &[u8], now: UnixTime) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key` until `expires`.
    fn put(&self, key: &[u8], value: &[u8], expires: UnixTime) -> Result<(), StoreError>;
    /// Whether we sent a message with this Message-ID.
    fn sent(&self, message_id: &str) -> Result<Sent, StoreError>;
}

/// What the sent-Message-ID index says about one Message-ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    Yes,
    No,
    /// We have never sent anything: there is nothing to compare with.
    NothingYet,
}

/// Greylisting over a [`Store`].
pub(crate) struct Grey<'a>(pub &'a dyn Store);

impl GreyStore for Grey<'_> {
    fn get(&self, key: &[u8], now: UnixTime) -> Result<Option<Vec<u8>>, StoreError> {
        self.0.get(key, now)
    }

    fn put(&self, key: &[u8], value: &[u8], expires: UnixTime) -> Result<(), StoreError> {
        self.0.put(key, value, expires)
    }
}

/// A value and when it expires.
#[cfg(test)]
pub(crate) type Expiring = (Vec<u8>, UnixTime);

/// A [`Store`] in memory, for tests.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct MemoryStore {
    pub values: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Expiring>>,
    /// The Message-IDs sent; `None`: nothing sent yet.
    pub sent: Option<Vec<String>>,
}

#[cfg(test)]
impl Store for MemoryStore {
    fn get(&self, key: &[u8], now: UnixTime) -> Result<Option<Vec<u8>>, StoreError> {
        let values = self.values.lock().unwrap();
        Ok(values
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(v, _)| v.clone()))
    }

    fn put(&self, key: &[u8], value: &[u8], expires: UnixTime) -> Result<(), StoreError> {
        let mut values = self.values.lock().unwrap();
        values.insert(key.to_vec(), (value.to_vec(), expires));
        Ok(())
    }

    fn sent(&self, message_id: &str) -> Result<Sent, StoreError> {
        Ok(match &self.sent {
            None => Sent::NothingYet,
            Some(ids) if ids.iter().any(|id| id == message_id) => Sent::Yes,
            Some(_) => Sent::No,
        })
    }
}
