//! The persistent mail queue on RocksDB. This is the only crate that knows RocksDB.
//!
//! Layout:
//! - [`store`]: [`Queue`], opening the database and the accept path. An accept is one
//!   `WriteBatch` (body, envelope, schedule entry) written with `sync = true` by the group-commit
//!   writer thread, which folds the accepts of all concurrent sessions into one fsync.
//! - [`schedule`]: leases for the delivery agent, attempts, retries and expiry, and the
//!   administrator's hold, release, flush and delete. Delivery is at least once.
//! - [`quarantine`]: messages that are neither delivered nor bounced, with their reason.
//! - [`state`]: the sent-Message-ID index and a key-value area for other crates.
//! - [`record`]: the on-disk records. They are versioned byte formats of their own, not the
//!   in-memory types, so the types can change without breaking queues already on disk.
//!
//! Only `record` is built without the default feature `store` (no RocksDB): the fuzz targets
//! decode records that way.
//!
//! Column families:
//! - `messages`: queue id (8 octets, big-endian) → message body as received (a large one's
//!   head only), and queue id ++ `s` → the length of its spooled rest in `spool/<queue id>`
//!   (see [`spool`]).
//! - `envelopes`: queue id → entry record (envelope, per-recipient state, hold flag).
//! - `schedule`: due time (8 octets, big-endian Unix seconds) ++ queue id → empty: the order in
//!   which the delivery agent picks messages up. Held messages are not in it.
//! - `due`: queue id → its due time, to find its schedule key.
//! - `quarantine`: queue id ++ 0 → quarantine record, queue id ++ 1 → body (head), queue id ++
//!   2 → the length of its spooled rest.
//! - `sent_message_ids`: Message-ID hash → time sent.
//! - `state`: key → expiry time ++ value.
//! - `damaged`: records that could not be decoded, moved aside with the reason.

#[cfg(feature = "store")]
pub mod quarantine;
pub mod record;
#[cfg(feature = "store")]
pub mod schedule;
#[cfg(feature = "store")]
pub mod spool;
#[cfg(feature = "store")]
pub mod state;
#[cfg(feature = "store")]
pub mod store;

#[cfg(feature = "store")]
pub use quarantine::{Hold, KindTotals, Page, QuarantineQuery, Released};
pub use record::{Entry, Held, HeldState, QuarantineRecord};
#[cfg(feature = "store")]
pub use schedule::{AfterAttempts, Changes, Notices, RetryPolicy};
#[cfg(feature = "store")]
pub use state::message_id_hash;
#[cfg(feature = "store")]
pub use store::{Queue, QueueError, StoredMessage};
