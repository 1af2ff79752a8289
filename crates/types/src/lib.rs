//! Domain types shared by every backstop crate.
//!
//! Layout:
//! - [`address`]: [`Domain`], [`Address`] and the SMTP [`ReversePath`] (which may be null).
//! - [`envelope`]: the [`Envelope`] recorded for every accepted message: sender, recipients with
//!   their DSN parameters, who the client was and how far the sender is trusted ([`TrustClass`]).
//! - [`reply`]: [`Reply`], an SMTP reply with its enhanced status code. Every reply backstop sends
//!   is built by a constructor here, never from a literal at the call site.
//! - [`orcpt`]: [`Orcpt`], a recipient's original address (RFC 3461), checked and re-encoded.
//! - [`text`]: guards for untrusted text: [`text::Escaped`] for log lines, [`text::one_line`]
//!   below every writer of a line-based protocol or a header field.
//! - [`secret`]: comparing secrets in constant time.
//! - [`queue_id`]: [`QueueId`], the name of a message in the queue.
//! - [`delivery`]: [`RecipientState`], where each recipient of a queued message stands, and
//!   [`AttemptOutcome`], what one delivery attempt came to.
//! - [`budget`]: [`budget::MemoryBudget`], the memory the server may hold for message data in
//!   progress (sessions receiving, deliveries sending), and each holder's share.
//! - [`body`]: [`Body`], a message's octets: the head (every header field) in memory, a large
//!   message's rest in a spool file.
//! - [`quarantine`]: [`quarantine::Reason`], why a message is in quarantine, and
//!   [`quarantine::Owner`], who may act on each recipient's copy.
//! - [`clock`]: [`Clock`], the one way to read the time: [`SystemClock`], or [`ManualClock`]
//!   for tests.
//!
//! Architecture invariant: this crate does no I/O (but reading a spooled body back, in
//! [`body`]) and knows no async runtime. Time is passed
//! in as [`UnixTime`], read from a [`Clock`] the caller was given.

pub mod address;
pub mod body;
pub mod budget;
pub mod clock;
pub mod delivery;
pub mod endpoint;
pub mod envelope;
pub mod orcpt;
pub mod prometheus;
pub mod quarantine;
pub mod queue_id;
pub mod reply;
pub mod secret;
pub mod text;

pub use address::{Address, AddressError, Domain, ReversePath};
pub use body::{Body, Spooled};
pub use clock::{Clock, ManualClock, SystemClock};
pub use delivery::{Attempt, AttemptOutcome, RecipientState, RemoteReply};
pub use endpoint::Endpoint;
pub use envelope::{
    AuthInfo, BodyType, ClientInfo, DsnParams, Envelope, Notify, Recipient, Ret, TlsInfo,
    TrustClass, UnixTime,
};
pub use orcpt::{Orcpt, OrcptError};
pub use queue_id::QueueId;
pub use reply::{EnhancedStatus, Reply};
