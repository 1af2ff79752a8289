//! What the session's driver asks while the client waits, and where accepted messages go: the
//! [`Policy`] and [`MessageSink`] traits, beside the verdicts they answer with. The binary
//! supplies both (the policy from `backstop-policy`, the sink on the queue); the listener only
//! carries questions and answers between them and the session.

use std::future::Future;
use std::net::IpAddr;

use backstop_types::QueueId;

use crate::{
    AuthOutcome, ContentVerdict, EnqueueFailure, Message, RecipientQuery, RecipientVerdict,
    SenderQuery, SenderVerdict,
};

/// Which checks a policy makes, so that the session asks only for those; the rest is answered
/// at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checks {
    /// Ask about each MAIL FROM ([`crate::Output::CheckSender`]).
    pub senders: bool,
    /// Ask about each recipient in a local or relay domain ([`crate::Output::CheckRecipient`])
    /// instead of accepting it at once.
    pub recipients: bool,
    /// Ask about each message before the reply to DATA ([`crate::Output::CheckMessage`]).
    pub messages: bool,
}

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
        reason: backstop_types::quarantine::Reason,
    ) -> impl Future<Output = Result<QueueId, EnqueueFailure>> + Send;
}

/// The in-session checks, asked while the client waits. A source that cannot answer says so
/// (a 4xx verdict), never accept.
pub trait Policy: Send + Sync + 'static {
    /// What the policy keeps for one session between its checks (a transaction open at a
    /// proxied relay, say). Made when the connection is admitted, dropped when it ends.
    type Session: Send + 'static;

    /// The checks this policy makes.
    fn checks(&self) -> Checks;

    /// Whether a new connection from `ip` may start (connection rate limits). Clients in the
    /// local networks are exempt.
    fn allow_connection(
        &self,
        ip: IpAddr,
        local_submitter: bool,
    ) -> impl Future<Output = bool> + Send;

    /// A new session's context.
    fn open_session(&self) -> Self::Session;

    /// Whether to take a MAIL FROM.
    fn check_sender(
        &self,
        session: &mut Self::Session,
        query: SenderQuery,
    ) -> impl Future<Output = SenderVerdict> + Send;

    /// Whether to take a recipient in a local or relay domain.
    fn check_recipient(
        &self,
        session: &mut Self::Session,
        query: RecipientQuery,
    ) -> impl Future<Output = RecipientVerdict> + Send;

    /// The checks on a whole message, before the reply to DATA.
    fn check_message(
        &self,
        session: &mut Self::Session,
        message: &Message,
    ) -> impl Future<Output = ContentVerdict> + Send;

    /// A login the users file does not know, for another source (a directory, Dovecot);
    /// `None` when there is none (the users file then answers, in the time a known user takes,
    /// so that unknown names cannot be told by timing). `TemporaryFailure` when it cannot
    /// answer. `client` logs in from there, under TLS when `secured`.
    fn authenticate(
        &self,
        _user: &str,
        _password: &str,
        _client: IpAddr,
        _secured: bool,
    ) -> impl Future<Output = Option<AuthOutcome>> + Send {
        async { None }
    }
}
