//! The delivery agent: takes due messages from the queue under a lease, delivers each
//! recipient by its route, and records what every attempt came to.
//!
//! Layout:
//! - [`scheduler`]: the continuous scheduler: due messages leased and split into jobs per
//!   destination (a relay's next hop, a domain's MX hosts, the local Maildirs), each with its
//!   own concurrency window and down state, so no destination holds up another.
//! - [`agent`]: the settings ([`agent::Agent`]: routes, keys, limits) and what is done per
//!   message: local delivery, signing, recording an attempt.
//! - [`maildir`]: local delivery into Maildir folders under the data directory.
//! - [`own`]: where this server listens, so that it is never its own next hop.
//! - [`mx`]: MX lookup through hickory-resolver (null MX, implicit MX, IPv4 and IPv6).
//! - [`dkim`]: DKIM signing of our own users' mail, by the key of the From domain.
//! - [`report`]: delivery status notifications after each attempt, as the bounce gate
//!   allows, queued in the same write as the attempt; counters for the metrics.
//!
//! Routes: recipients in a local domain go to their Maildir; other domains go by the first
//! `[[route]]` that covers them, to a fixed next hop (SMTP or LMTP, TCP or Unix socket) or to
//! the domain's MX hosts. A domain no route covers is deferred with 4.4.0, so it waits in the
//! queue and, after the queue lifetime, goes to quarantine: never a bounce.
//!
//! Mail from our own users (authenticated, or from a local network, with a sender in a local
//! domain) leaves with a BATV-tagged return path and a DKIM signature, when keys are set.
//!
//! Architecture invariant: never touches the listener; talks to the queue only through
//! `backstop-queue`'s lease and attempt API. Delivery is at least once.

pub mod agent;
pub mod dkim;
pub mod maildir;
pub mod mx;
pub mod own;
pub mod report;
pub mod scheduler;
