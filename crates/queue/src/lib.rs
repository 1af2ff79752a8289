//! The persistent mail queue on RocksDB. This is the only crate that knows RocksDB.
//!
//! Layout:
//! - [`store`]: [`Queue`], opening the database and the accept path. An accept is one
//!   `WriteBatch` (body, envelope, schedule entry) written with `sync = true` by the group-commit
//!   writer thread, which folds the accepts of all concurrent sessions into one fsync.
//! - [`record`]: the on-disk records. They are versioned byte formats of their own, not the
//!   in-memory types, so the types can change without breaking queues already on disk.
//!
//! Column families:
//! - `messages`: queue id (8 octets, big-endian) → message body as received.
//! - `envelopes`: queue id → envelope record.
//! - `schedule`: due time (8 octets, big-endian Unix seconds) ++ queue id → empty: the order in
//!   which the delivery agent will pick messages up.

pub mod record;
pub mod store;

pub use store::{Queue, QueueError, StoredMessage};
