//! The SMTP server side as a sans-IO state machine over the `smtp-proto` parser.
//!
//! Bytes and time go in; replies and actions come out. Nothing here touches a socket or reads a
//! clock, so every behaviour is tested by transcripts (`src/tests.rs`).
//!
//! Layout:
//! - [`session`]: [`ServerSession`], the state machine. Call order, for the driver:
//!   1. [`ServerSession::new`], then [`ServerSession::greet`] once any greeting delay has passed;
//!   2. [`ServerSession::handle_bytes`] with whatever the socket read;
//!   3. drain [`ServerSession::poll_output`] and act on each [`Output`]; some outputs
//!      ([`Output::Authenticate`], [`Output::Enqueue`], [`Output::StartTls`]) wait for their
//!      answer ([`ServerSession::handle_auth`], [`ServerSession::handle_enqueued`],
//!      [`ServerSession::tls_established`]) before more input is processed;
//!   4. when [`ServerSession::read_timeout`] passes without input, call
//!      [`ServerSession::handle_timeout`].
//! - [`data`]: the DATA and BDAT framers. Only `CRLF . CRLF` ends DATA; a bare CR, a bare LF or a
//!   NUL anywhere in the data gets the whole message refused (SMTP smuggling).
//! - [`sasl`]: decoding of AUTH PLAIN and LOGIN exchanges.
//! - [`params`]: MAIL, RCPT and BDAT arguments read from the raw line (ORCPT, ENVID, SIZE,
//!   chunk sizes), where smtp-proto's parser decodes too early or wraps.
//! - [`headers`]: the hop count and forged `Authentication-Results:` in a received header.
//! - [`received`]: the `Received:` trace header (RFC 5321 4.4, RFC 3848).

/// The memory budget lives in `backstop_types` (delivery shares it); the sessions' path to it.
pub use backstop_types::budget;
pub mod data;
pub mod headers;
pub mod params;
pub mod policy;
pub mod received;
pub mod sasl;
pub mod session;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use backstop_types::{Domain, Envelope, TlsInfo};

pub use policy::{Checks, MessageSink, Policy};
pub use session::{recipient_scope, Scope, ServerSession};

/// What a session needs from the configuration. Built once per listener; a session keeps the
/// one it started with for its whole life, so a config reload never changes rules mid-session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name in the greeting, the EHLO reply and `Received:`.
    pub hostname: String,
    /// The name of the listener (`mx`, `submission`, ...), recorded in the envelope.
    pub listener: String,
    /// Longest command line accepted, CRLF included.
    pub max_line_length: usize,
    pub max_recipients: usize,
    /// Largest message accepted, in octets of data as sent by the client.
    pub max_message_size: u64,
    /// Errors allowed before the session is closed with 421.
    pub max_errors: u32,
    /// How long a command line may take to arrive, and how long the session waits for one.
    pub command_timeout: Duration,
    /// How long the client may be silent during DATA or BDAT, and the base of the whole
    /// transfer's deadline (see `min_data_rate`).
    pub data_timeout: Duration,
    /// A whole DATA (or BDAT chunk) must arrive within `data_timeout` plus its size at this
    /// many octets per second, so a client trickling a byte at a time cannot hold a
    /// connection far past the timeouts (Postfix's `smtpd_min_data_rate`).
    pub min_data_rate: u64,
    /// A message with more `Received:` fields than this is refused as a mail loop (`554 5.4.6`;
    /// Postfix's `hop_count_limit`).
    pub max_hops: usize,
    /// Local domains delivered into Maildirs here: a local part that cannot be a Maildir
    /// folder name is refused at RCPT (`550 5.1.3`) rather than accepted and failed later.
    pub maildir_domains: Vec<Domain>,
    /// Whether STARTTLS can be offered (a certificate is configured) on this listener.
    pub starttls: bool,
    pub auth: AuthPolicy,
    /// Submission: MAIL is refused until the client has authenticated (or is a local submitter).
    pub require_auth: bool,
    /// Domains we deliver locally and accept mail for from anyone.
    pub local_domains: Vec<Domain>,
    /// Domains we accept from anyone to relay onward (an edge relay's internal domains).
    /// Unauthenticated clients may send only to local and relay domains.
    pub relay_domains: Vec<Domain>,
    /// What the driver is asked about (the policy's [`Checks`]).
    pub checks: Checks,
    /// The memory all sessions together may hold for messages in progress; one for the whole
    /// server, shared by every listener's config.
    pub memory: Arc<budget::MemoryBudget>,
    /// Where a message larger than its threshold goes while it arrives; `None`: every
    /// message is held in memory.
    pub spool: Option<SpoolConfig>,
}

/// Spooling of large messages on receipt: past `threshold` octets, the content after the
/// header section goes to a file in `dir` ([`Output::Spool`]) and only the header section
/// stays in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// The directory of files being received (the queue's `incoming` spool directory).
    pub dir: std::path::PathBuf,
    pub threshold: u64,
}

/// When AUTH is offered on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPolicy {
    /// Never (a port-25 listener).
    Disabled,
    /// Only once TLS is active (the default for submission).
    RequireTls,
    /// Also in plain text: only when a listener is explicitly configured so.
    AllowPlaintext,
}

/// Who is connecting, as the listener knows before the first byte.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ip: IpAddr,
    /// The client's address is in a network configured as local submitters.
    pub local_submitter: bool,
    /// Set for implicit TLS (port 465): the handshake happened before the session began.
    pub tls: Option<TlsInfo>,
    /// The driver's number for this session (its log span's id), for state the policy keeps
    /// per session (a proxied transaction's connection).
    pub id: u64,
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Output {
    /// Write this reply to the client.
    Reply(backstop_types::Reply),
    /// Write any replies before this, then run the TLS handshake and call
    /// [`ServerSession::tls_established`].
    StartTls,
    /// Check these credentials and call [`ServerSession::handle_auth`].
    Authenticate(Credentials),
    /// Decide on this sender and call [`ServerSession::handle_sender`].
    CheckSender(SenderQuery),
    /// Decide on this recipient and call [`ServerSession::handle_recipient`].
    CheckRecipient(RecipientQuery),
    /// Run the content checks and call [`ServerSession::handle_message`] with the message and
    /// the verdict. The client gets no reply until then.
    CheckMessage(Box<Message>),
    /// Store this message durably in quarantine (never delivered, never bounced), then call
    /// [`ServerSession::handle_enqueued`].
    Quarantine {
        message: Box<Message>,
        reason: backstop_types::quarantine::Reason,
    },
    /// Store this message durably, then call [`ServerSession::handle_enqueued`]. The client gets
    /// no reply until then.
    Enqueue(Box<Message>),
    /// Append `bytes` to the spool file at `path` (create it when `create`), before reading
    /// more input. The message that ends the transaction names the file in its
    /// [`Body`](backstop_types::Body); the driver removes the file when the transaction is
    /// over and it was not taken into the queue.
    Spool {
        path: std::path::PathBuf,
        bytes: Vec<u8>,
        create: bool,
    },
    /// Write any replies before this, then close the connection.
    Close,
}

/// Credentials from AUTH PLAIN or LOGIN. Only a username equal to the authorization identity
/// (or with none given) reaches the driver: proxy authorization is refused in the session.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub mechanism: sasl::Mechanism,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The answer to [`Output::Authenticate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Logged in; may use these envelope senders.
    Success(SenderRights),
    /// Wrong user or password.
    Failure,
    /// The credential store could not answer.
    TemporaryFailure,
    /// Too many failed logins from this client or for this name: refused unchecked for now.
    Throttled,
}

/// A MAIL FROM to decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderQuery {
    pub sender: backstop_types::ReversePath,
    pub client: IpAddr,
    /// The name the client gave in EHLO/HELO (SPF checks it for a null sender).
    pub helo: String,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// The client authenticated or is a local submitter.
    pub trusted: bool,
}

/// The answer to [`Output::CheckSender`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderVerdict {
    Accept,
    /// Over a rate limit: `451 4.7.1`, slow down.
    RateLimited,
    /// The check could not be made: `451 4.3.0`.
    Unavailable,
    /// The client is on this DNS blocklist: `554 5.7.1`.
    Blocklisted {
        zone: String,
    },
    /// Refused with this reply (a sender authentication result, for example).
    Refused(backstop_types::Reply),
}

/// A recipient to decide on, with what is known of the transaction so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientQuery {
    pub recipient: backstop_types::Address,
    pub sender: backstop_types::ReversePath,
    pub client: IpAddr,
    /// In a local domain (delivered here) rather than a relay domain.
    pub local: bool,
    /// The client authenticated or is a local submitter.
    pub trusted: bool,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// Which transaction of which session: for a proxied transaction's connection.
    pub transaction: TransactionRef,
    /// Whether the transaction's recipients so far are proxied (`Some(true)`), queued
    /// (`Some(false)`), or none yet.
    pub proxied: Option<bool>,
    /// The message's size as the client announced it at MAIL (SIZE=), for a mailbox server
    /// asked whether it has room.
    pub size: Option<u64>,
}

/// One transaction of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TransactionRef {
    pub session: u64,
    /// Counts the session's MAIL commands from 1.
    pub number: u64,
}

/// The answer to [`Output::CheckRecipient`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecipientVerdict {
    /// It exists: record these addresses (the one asked about, or its alias targets).
    Accept(Vec<backstop_types::Address>),
    /// No such recipient: `550 5.1.1`.
    Unknown,
    /// The recipient's domain is proxied: the next hop was asked and gave this reply, which
    /// the client gets; a 2xx takes the recipient into a proxied transaction.
    Proxied(backstop_types::Reply),
    /// Proxied and queued recipients do not mix: `451 4.5.3`, send it separately.
    SeparateTransaction,
    /// Refused with the next hop's own reply (callahead: a mailbox server said the mailbox is
    /// unknown or full); a 4xx asks the client to try again.
    NextHopRefused(backstop_types::Reply),
    /// The lookup failed: `451 4.4.3`, so the client tries again. Never an accept.
    Unavailable,
    /// Greylisted: `451 4.7.1`, try again in this many seconds.
    Defer { retry_after: u64 },
    /// Over a rate limit: `451 4.7.1`, slow down.
    RateLimited,
    /// A bounce (null sender) to an address that only ever sends with a BATV-tagged return
    /// path, without a valid tag: backscatter, `550 5.7.1`.
    NotOurBounce(BounceProblem),
}

/// What is wrong with a bounce's recipient address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceProblem {
    /// No BATV tag at all.
    Missing,
    /// A tag that does not verify (forged, or of a key we do not have).
    Invalid,
    /// A tag past its expiry day.
    Expired,
}

impl BounceProblem {
    /// As the log shows it: `missing`, `invalid`, `expired`.
    pub fn label(self) -> &'static str {
        match self {
            BounceProblem::Missing => "missing",
            BounceProblem::Invalid => "invalid",
            BounceProblem::Expired => "expired",
        }
    }

    /// The refusal at RCPT: `550 5.7.1` saying what is wrong with the tag.
    pub fn reply(self) -> backstop_types::Reply {
        backstop_types::Reply::bounce_refused(match self {
            BounceProblem::Missing => "its address carries no BATV tag",
            BounceProblem::Invalid => "its BATV tag is not valid",
            BounceProblem::Expired => "its BATV tag has expired",
        })
    }
}

/// The answer to [`Output::CheckMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentVerdict {
    Accept,
    /// Accept this message instead of the one received: header fields added (the results
    /// of sender authentication), or the content or envelope changed by a content check.
    AcceptChanged(Box<Message>),
    /// Refuse the message with this reply (5xx, or 4xx when a check could not be made).
    Refuse(backstop_types::Reply),
    /// Accept it into quarantine, for this reason.
    Quarantine(backstop_types::quarantine::Reason),
    /// Tell the client it was taken, and drop it: only for rules an administrator marked
    /// as certain; the reason is logged.
    Discard(String),
    /// A proxied transaction: the next hop's final reply to the message, for the client;
    /// nothing was queued.
    Relayed(backstop_types::Reply),
}

/// Why the driver could not store a message. Either way the client is told to try again later,
/// so nothing is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnqueueFailure {
    /// The disk is full: `452 4.3.1`.
    StorageFull,
    /// Any other storage failure: `451 4.3.0`.
    Unavailable,
}

impl EnqueueFailure {
    /// As the log shows it.
    pub fn label(self) -> &'static str {
        match self {
            EnqueueFailure::StorageFull => "storage full",
            EnqueueFailure::Unavailable => "unavailable",
        }
    }
}

/// Which envelope senders an authenticated user may use in MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderRights {
    /// Any sender: the restriction is turned off.
    Any,
    /// These addresses and any address in these domains; the null sender is always allowed.
    Only {
        addresses: Vec<backstop_types::Address>,
        domains: Vec<Domain>,
    },
}

impl SenderRights {
    pub fn allows(&self, sender: &backstop_types::ReversePath) -> bool {
        let (addresses, domains) = match self {
            SenderRights::Any => return true,
            SenderRights::Only { addresses, domains } => (addresses, domains),
        };
        let Some(sender) = sender.address() else {
            return true;
        };
        domains.contains(sender.domain())
            || addresses.iter().any(|a| {
                a.domain() == sender.domain()
                    && a.local_part().eq_ignore_ascii_case(sender.local_part())
            })
    }
}

/// An accepted message, ready for the queue: the `Received:` header is already at the front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub envelope: Envelope,
    pub body: backstop_types::Body,
    /// Set when the recipients are proxied: the policy sends it on and answers `Relayed`.
    pub proxied: Option<TransactionRef>,
}

#[cfg(test)]
mod tests;
