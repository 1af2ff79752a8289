//! The delivery agent: takes due messages from the queue under a lease, delivers each
//! recipient by its route, and records what every attempt came to.
//!
//! Layout:
//! - [`agent`]: the loop ([`agent::run`]) and one pass over the due messages
//!   ([`agent::Agent::pass`]): routing, delivery, recording.
//! - [`maildir`]: local delivery into Maildir folders under the data directory.
//! - [`smtp`]: the SMTP client for relay routes (a fixed next hop).
//!
//! Routes today: recipients in a local domain go to their Maildir; domains with a relay route
//! go over SMTP to that next hop; other domains have no route yet (MX lookup and LMTP are
//! still to come) and are deferred with 4.4.0, so they wait in the queue and, after the queue
//! lifetime, go to quarantine: never a bounce.
//!
//! Architecture invariant: never touches the listener; talks to the queue only through
//! `backstop-queue`'s lease and attempt API. Delivery is at least once.

pub mod agent;
pub mod maildir;
pub mod smtp;
