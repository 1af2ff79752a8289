//! The state a site's nodes must share, behind one async interface ([`State`]):
//! greylisting (a sender retrying through another MX must not be greylisted again), rate
//! counters (a limit is the site's, not N times the limit), failed logins (a password guesser
//! spread over the nodes is counted once), callahead answers and the
//! sent-Message-ID index of bounce provenance (a bounce for mail sent by node A may come to
//! node B).
//!
//! Keys are typed ([`Key`]); values are bytes with a time to live; counters are added to in
//! fixed windows, atomically. The embedded default keeps the state on the node: the queue's
//! RocksDB for values (`backstop_queue`) and [`MemoryCounters`] for counters. A site of several
//! nodes keeps it in Redis ([`redis::Redis`]: one server or a cluster). Neither the callers nor
//! the queue know which: they hold a `dyn State`.
//!
//! What a caller does when the store cannot answer is the caller's rule, stated once where it
//! asks (see docs/anti-backscatter.md): greylisting, callahead and bounce provenance answer 451,
//! rate limits and failed-login counts fall back to the node's own counters. [`Bounded`] puts
//! a deadline on every call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use backstop_types::UnixTime;

mod memory;
pub mod redis;

pub use memory::{MemoryCounters, MemoryState, Unreachable, MAX_COUNTERS};

/// A future a [`State`] call returns.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'a>>;

/// What is kept, by kind. The kind is part of the stored key, so kinds never collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A greylisting triplet: client network, sender and recipient, as greylisting writes it.
    GreyTriplet(String),
    /// A client network that retried properly and passes greylisting for a while.
    GreyPass(String),
    /// A rate counter: what is counted and for whom (`client-messages:192.0.2.1`).
    Rate(String),
    /// A callahead answer for a recipient (lower case).
    Callahead(String),
    /// Failed logins counted in a window: `ip:NETWORK` (an IPv6 client's /64) or `user:NAME`
    /// (lower case).
    AuthFailures(String),
    /// A Message-ID we sent, by [`message_id_hash`].
    SentId([u8; 16]),
    /// Present once any Message-ID was recorded (bounce provenance has something to compare).
    AnySent,
}

impl Key {
    /// The stored form, the same in every store (the queue's RocksDB kept greylisting and
    /// callahead answers under these names before there was an interface).
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Key::GreyTriplet(t) => format!("grey:triplet:{t}").into_bytes(),
            Key::GreyPass(n) => format!("grey:pass:{n}").into_bytes(),
            Key::Rate(r) => format!("rate:{r}").into_bytes(),
            Key::Callahead(r) => format!("callahead:{r}").into_bytes(),
            Key::AuthFailures(a) => format!("auth-failures:{a}").into_bytes(),
            Key::SentId(hash) => [b"sent:".as_slice(), hash].concat(),
            Key::AnySent => b"sent-any".to_vec(),
        }
    }

    /// The kind, for log lines and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Key::GreyTriplet(_) | Key::GreyPass(_) => "greylist",
            Key::Rate(_) => "rate",
            Key::Callahead(_) => "callahead",
            Key::AuthFailures(_) => "auth",
            Key::SentId(_) | Key::AnySent => "sent",
        }
    }
}

/// The key of a Message-ID in the sent index: the first 16 bytes of SHA-256 over the id
/// without its angle brackets and surrounding space, so that every part hashes it the same.
pub fn message_id_hash(message_id: &str) -> [u8; 16] {
    let id = message_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let digest = ring::digest::digest(&ring::digest::SHA256, id.as_bytes());
    let mut hash = [0; 16];
    hash.copy_from_slice(&digest.as_ref()[..16]);
    hash
}

/// Why the store did not answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    #[error("the state store did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the state store cannot be reached: {0}")]
    Unreachable(String),
    #[error("the state store failed: {0}")]
    Failed(String),
}

/// The state of a site. Every call names the time it is made at (`now`), so that a store on
/// the node follows the clock the rest of the server reads; Redis keeps its own time for
/// expiry and gets a time to live.
pub trait State: Send + Sync + 'static {
    /// The value of `key`, unless it has expired.
    fn get<'a>(&'a self, key: &'a Key, now: UnixTime) -> Answer<'a, Option<Vec<u8>>>;

    /// Sets `key` to `value` until `expires`.
    fn put<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        expires: UnixTime,
        now: UnixTime,
    ) -> Answer<'a, ()>;

    /// Adds `amount` to the counter `key` in the fixed window of `window` that holds `now`
    /// (windows start at multiples of `window` since the epoch, on every node alike) and
    /// returns the count after the addition. Atomic: two nodes adding at once both count.
    fn add_in_window<'a>(
        &'a self,
        key: &'a Key,
        amount: u64,
        window: Duration,
        now: UnixTime,
    ) -> Answer<'a, u64>;

    /// Where the state is, for log lines ("this node", "redis://10.0.0.5:6379/0").
    fn describe(&self) -> String;
}

/// The start of the fixed window of `window` that holds `now`.
pub fn window_start(window: Duration, now: UnixTime) -> u64 {
    let width = window.as_secs().max(1);
    now.0 - now.0 % width
}

/// A [`State`] whose every call ends by a deadline: the store's answer, or
/// [`StateError::Timeout`].
pub struct Bounded {
    inner: Arc<dyn State>,
    deadline: Duration,
}

impl Bounded {
    pub fn new(inner: Arc<dyn State>, deadline: Duration) -> Bounded {
        Bounded { inner, deadline }
    }

    async fn within<T>(&self, call: Answer<'_, T>) -> Result<T, StateError> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(answer) => answer,
            Err(_) => Err(StateError::Timeout(self.deadline)),
        }
    }
}

impl State for Bounded {
    fn get<'a>(&'a self, key: &'a Key, now: UnixTime) -> Answer<'a, Option<Vec<u8>>> {
        Box::pin(self.within(self.inner.get(key, now)))
    }

    fn put<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        expires: UnixTime,
        now: UnixTime,
    ) -> Answer<'a, ()> {
        Box::pin(self.within(self.inner.put(key, value, expires, now)))
    }

    fn add_in_window<'a>(
        &'a self,
        key: &'a Key,
        amount: u64,
        window: Duration,
        now: UnixTime,
    ) -> Answer<'a, u64> {
        Box::pin(self.within(self.inner.add_in_window(key, amount, window, now)))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

#[cfg(test)]
mod tests;
