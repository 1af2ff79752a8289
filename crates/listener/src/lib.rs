//! The network side of the SMTP server: tokio accept loops, TLS, AUTH and connection limits.
//! It drives a [`backstop_session::ServerSession`] per connection and knows nothing of storage:
//! accepted messages go to a [`MessageSink`], and in-session checks to a [`Policy`], both
//! provided by the binary.
//!
//! Layout:
//! - [`server`]: [`serve`], the accept loops for already-bound sockets, and the per-connection
//!   driver that turns session outputs into socket I/O.
//! - [`tls`]: the rustls server config, in the server's order of cipher suites: certificate
//!   and key from files, or a self-signed certificate for the host name kept under the data
//!   directory and renewed at load when it expires within 60 days.
//! - [`users`]: the AUTH user file (argon2 or SHA-512-crypt hashes, never plain text).
//! - [`bind`]: listening sockets, with `IPV6_V6ONLY` where an IPv4 listener shares the port.
//! - [`limits`]: connection limits (total and per client, an IPv6 client as its /64), stress
//!   mode, client networks, and the unmapping of IPv4-mapped addresses.
//! - [`auth_limits`]: failed logins counted per client and per name across connections, with
//!   a growing delay and then `454 4.7.0`; password checks bounded.

pub mod auth_limits;
pub mod bind;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod tls;
pub mod users;

use std::future::Future;

use backstop_session::{
    ContentVerdict, EnqueueFailure, Message, RecipientQuery, RecipientVerdict, SenderQuery,
    SenderVerdict,
};
use backstop_types::QueueId;

pub use limits::{ConnectionLimits, IpNetwork};
pub use server::{serve, Context, Listener, ListenerMode, ListenerSettings};
pub use users::UserStore;

/// Where accepted messages go. `enqueue` must return only once the message is durably stored:
/// its `Ok` is what the client hears as `250`.
pub trait MessageSink: Send + Sync + 'static {
    fn enqueue(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<QueueId, EnqueueFailure>> + Send;

    /// Stores a message durably in quarantine (never delivered, never bounced).
    fn quarantine(
        &self,
        message: Message,
        reason: String,
    ) -> impl Future<Output = Result<QueueId, EnqueueFailure>> + Send;
}

/// The in-session checks the listener asks for while the client waits. The binary provides
/// them (from `backstop-filter`); the listener only carries the answers to the session.
pub trait Policy: Send + Sync + 'static {
    /// Whether a new connection from `ip` may start (connection rate limits). Clients in the
    /// local networks are exempt.
    fn allow_connection(&self, ip: std::net::IpAddr, local_submitter: bool) -> bool;

    /// The content checks on a whole message, before the reply to DATA.
    fn check_message(&self, message: &Message) -> impl Future<Output = ContentVerdict> + Send;

    /// Whether to take a MAIL FROM (message rate limits).
    fn check_sender(&self, query: SenderQuery) -> impl Future<Output = SenderVerdict> + Send;

    /// Whether to take a recipient in a local or relay domain: does it exist, is it
    /// greylisted. A source that cannot answer must say [`RecipientVerdict::Unavailable`],
    /// never accept.
    fn check_recipient(
        &self,
        query: RecipientQuery,
    ) -> impl Future<Output = RecipientVerdict> + Send;

    /// The session `session` (its [`backstop_session::Peer::id`]) is over: what the policy
    /// keeps for it can go.
    fn session_ended(&self, _session: u64) {}

    /// A login the users file does not know, for another source (a directory, Dovecot);
    /// `None` when there is none (the users file then answers, in the time a known user takes,
    /// so that unknown names cannot be told by timing). `TemporaryFailure` when it cannot
    /// answer. `client` logs in from there, under TLS when `secured`.
    fn authenticate(
        &self,
        _user: &str,
        _password: &str,
        _client: std::net::IpAddr,
        _secured: bool,
    ) -> impl Future<Output = Option<backstop_session::AuthOutcome>> + Send {
        async { None }
    }
}
