//! Delivery status notifications, and the gate that decides who may get one.
//!
//! Layout:
//! - [`gate`]: the bounce gate, a pure function of how far the sender is trusted and what
//!   happened: a report to the return path, or none (and why not).
//! - [`render`]: the RFC 3464 report itself (`multipart/report; report-type=delivery-status`),
//!   built with mail-builder.
//!
//! Architecture invariant: pure. No sockets, no clock (dates come in), no RocksDB: the delivery
//! agent asks, and queues what comes out through the normal queue.

pub mod gate;
pub mod render;
