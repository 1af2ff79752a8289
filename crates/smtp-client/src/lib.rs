//! The SMTP and LMTP client, shared by delivery, callahead and proxy mode.
//!
//! Layout:
//! - [`session`]: [`ClientSession`], the client as a sans-IO state machine: replies (bytes)
//!   in, [`Action`]s out. It decides everything a conversation needs — EHLO or LHLO with the
//!   HELO fallback, STARTTLS as the [`TlsPolicy`] says (never with bytes behind the 220:
//!   CVE-2011-0411), AUTH PLAIN at a smarthost, PIPELINING, CHUNKING, the SIZE/8BITMIME/
//!   SMTPUTF8/BINARYMIME refusals before MAIL, DSN parameters, one outcome per recipient
//!   (LMTP's per-recipient replies too) — and touches no socket and reads no clock. Tested
//!   as transcripts (`session/tests.rs`).
//! - [`reply`]: reading replies and EHLO capabilities with smtp-proto's client-side parsers.
//! - [`error`]: [`ClientError`]: whose fault (remote, local, network), whether to retry, and
//!   the reply; the one place that builds the replies backstop makes up for a next hop.
//! - [`dot`]: dot-stuffing in chunks, for a body that is never copied whole.
//! - [`driver`]: the tokio driver: TCP or Unix socket, rustls, every RFC 5321 timeout as a
//!   `tokio::time` timeout; [`driver::Connection`] runs transactions, probes (callahead) and
//!   pass-through commands (proxy mode) over one session.
//! - [`tls`]: the TLS client configurations (opportunistic, or verified against CAs).
//!
//! Architecture invariant: no blocking I/O; every network wait has a timeout. Every command
//! line goes through one writer that refuses CR, LF and NUL in it.

pub mod dot;
pub mod driver;
pub mod error;
pub mod reply;
pub mod session;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

pub use driver::{probe, Connection, Outgoing};
pub use error::{ClientError, Retry, Source, Stage};
pub use session::{Action, ClientSession, Transaction, TxnResult};

pub use backstop_types::Endpoint;

/// One next hop: where, and its name (for TLS verification and the logs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NextHop {
    pub endpoint: Endpoint,
    pub host: String,
}

impl NextHop {
    /// `host[endpoint]`, as logs and reports name a remote MTA.
    pub fn remote(&self) -> String {
        format!("{}[{}]", self.host, self.endpoint)
    }
}

/// How TLS is used with a next hop.
#[derive(Debug, Clone)]
pub enum TlsPolicy {
    /// Never STARTTLS (a Unix socket, or a peer known to be broken).
    Off,
    /// STARTTLS when offered, any certificate (Postfix's `may`).
    Opportunistic,
    /// STARTTLS or no delivery, with the certificate verified by this configuration.
    Require(Arc<rustls::ClientConfig>),
}

impl TlsPolicy {
    /// A small number naming the policy, for telling connections apart in a pool.
    pub fn level(&self) -> u8 {
        match self {
            TlsPolicy::Off => 0,
            TlsPolicy::Opportunistic => 1,
            TlsPolicy::Require(_) => 2,
        }
    }
}

/// How to talk to the next hops of a route.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Our name in EHLO/LHLO.
    pub helo: String,
    /// Speak LMTP (to a mailbox server such as Dovecot) instead of SMTP.
    pub lmtp: bool,
    pub tls: TlsPolicy,
    pub connect_timeout: Duration,
    /// The reply timeouts; [`Timeouts::RFC5321`] unless a caller waits with a client.
    pub timeouts: Timeouts,
    /// Log in with SMTP AUTH (to a smarthost); only ever under TLS.
    pub auth: Option<Credentials>,
}

/// A user name and password for SMTP AUTH PLAIN.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        write!(f, "Credentials({})", self.user)
    }
}

/// How long to wait for each reply (RFC 5321 4.5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET and QUIT.
    pub command: Duration,
    /// The 354 to DATA.
    pub data_start: Duration,
    /// Sending each block of the message.
    pub data_block: Duration,
    /// The reply after the end of the message.
    pub data_end: Duration,
}

impl Timeouts {
    pub const RFC5321: Timeouts = Timeouts {
        command: Duration::from_secs(300),
        data_start: Duration::from_secs(120),
        data_block: Duration::from_secs(180),
        data_end: Duration::from_secs(600),
    };
}
