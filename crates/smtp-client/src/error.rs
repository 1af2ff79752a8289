//! What went wrong with a next hop: whose fault, whether to try again, and the reply — the
//! next hop's own, or one made up here. Every reply backstop makes up for a next hop (a
//! connection that failed, a timeout, a TLS requirement not met, a message the next hop cannot
//! take) is built in this file, so codes and enhanced status codes are in one place.

use backstop_types::{AttemptOutcome, EnhancedStatus, RemoteReply};

/// Whether trying again later can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    Transient,
    Permanent,
}

/// Whose fault it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The next hop said so.
    Remote,
    /// We cannot send this there (a size, an extension the message needs, a refused login).
    Local,
    /// The connection: refused, reset, timed out, garbage instead of replies, TLS failed.
    Network,
}

/// How far the conversation had come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Connect,
    Greeting,
    Ehlo,
    Tls,
    Auth,
    Mail,
    Rcpt,
    Data,
    /// After the message: the final reply.
    End,
}

/// A failure that ends a transaction, or a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub retry: Retry,
    pub source: Source,
    pub stage: Stage,
    pub reply: RemoteReply,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.reply.code, self.reply.text)
    }
}

impl std::error::Error for ClientError {}

impl ClientError {
    /// The next hop refused at `stage` with `reply`.
    pub fn remote(stage: Stage, reply: RemoteReply) -> ClientError {
        let retry = if reply.code / 100 == 5 {
            Retry::Permanent
        } else {
            Retry::Transient
        };
        ClientError {
            retry,
            source: Source::Remote,
            stage,
            reply,
        }
    }

    /// The connection failed at `stage` (`what`: connect, read, write, ...).
    pub fn network(stage: Stage, remote: &str, what: impl std::fmt::Display) -> ClientError {
        made_up(
            Retry::Transient,
            Source::Network,
            stage,
            451,
            EnhancedStatus(4, 4, 1),
            format!("connection with {remote} failed: {what}"),
        )
    }

    /// No reply within the timeout at `stage`.
    pub fn timeout(stage: Stage, remote: &str, waited: std::time::Duration) -> ClientError {
        made_up(
            Retry::Transient,
            Source::Network,
            stage,
            451,
            EnhancedStatus(4, 4, 2),
            format!(
                "{remote} did not answer within {}s ({})",
                waited.as_secs(),
                stage_name(stage)
            ),
        )
    }

    /// What came back is no SMTP reply.
    pub fn garbage(stage: Stage, remote: &str, why: &str) -> ClientError {
        made_up(
            Retry::Transient,
            Source::Network,
            stage,
            451,
            EnhancedStatus(4, 5, 0),
            format!("{remote} sent no valid reply ({why})"),
        )
    }

    /// The next hop closed the connection.
    pub fn closed(stage: Stage, remote: &str) -> ClientError {
        ClientError::network(stage, remote, "the connection was closed")
    }

    /// TLS was required and the next hop does not offer STARTTLS.
    pub fn tls_not_offered(remote: &str) -> ClientError {
        made_up(
            Retry::Transient,
            Source::Network,
            Stage::Tls,
            451,
            EnhancedStatus(4, 7, 4),
            format!("TLS is required, but {remote} does not offer STARTTLS"),
        )
    }

    /// The TLS handshake (or its certificate) failed, or bytes came behind the 220.
    pub fn tls_failed(remote: &str, why: impl std::fmt::Display) -> ClientError {
        made_up(
            Retry::Transient,
            Source::Network,
            Stage::Tls,
            451,
            EnhancedStatus(4, 7, 5),
            format!("TLS with {remote} failed: {why}"),
        )
    }

    /// We will not log in: no TLS, no AUTH PLAIN offered, or the login was refused. The mail
    /// waits (4.7.0) while the administrator fixes it.
    pub fn login(remote: &str, why: impl std::fmt::Display) -> ClientError {
        made_up(
            Retry::Transient,
            Source::Local,
            Stage::Auth,
            451,
            EnhancedStatus(4, 7, 0),
            format!("login at {remote}: {why}"),
        )
    }

    /// The message needs an extension the next hop lacks, or is larger than it takes.
    pub fn cannot_take(code: u16, status: EnhancedStatus, text: String) -> ClientError {
        made_up(
            Retry::Permanent,
            Source::Local,
            Stage::Mail,
            code,
            status,
            text,
        )
    }

    /// A command we would send holds a line break: refused, never sent.
    pub fn unsafe_command(why: impl std::fmt::Display) -> ClientError {
        made_up(
            Retry::Permanent,
            Source::Local,
            Stage::Mail,
            554,
            EnhancedStatus(5, 5, 2),
            format!("not sent: {why}"),
        )
    }

    /// The message could not be read here (its spool file): the connection is dropped before
    /// the end of the data, so the next hop takes nothing, and it is tried again later.
    pub fn unreadable(why: impl std::fmt::Display) -> ClientError {
        made_up(
            Retry::Transient,
            Source::Local,
            Stage::Data,
            451,
            EnhancedStatus(4, 3, 0),
            format!("reading the message: {why}"),
        )
    }

    /// The transaction ended before this recipient had a reply of its own.
    pub fn no_reply_for_recipient() -> ClientError {
        made_up(
            Retry::Transient,
            Source::Network,
            Stage::End,
            451,
            EnhancedStatus(4, 4, 2),
            "the transaction ended without a reply for this recipient".into(),
        )
    }

    /// Whether another host of the same destination may do better: the failure came before
    /// any recipient was taken, and was not a refusal for good.
    pub fn try_next_host(&self) -> bool {
        self.stage <= Stage::Mail && self.retry == Retry::Transient
    }

    /// Whether it says something about the destination rather than this message: refused or
    /// broken connections, timeouts, TLS failures, a 421 — what marks a destination down.
    pub fn is_connection_level(&self) -> bool {
        self.source == Source::Network
            || (self.source == Source::Remote
                && (self.reply.code == 421 || self.stage <= Stage::Ehlo))
    }

    /// The outcome this error gives a recipient.
    pub fn outcome(&self, remote: Option<&str>) -> AttemptOutcome {
        outcome(remote, self.reply.clone())
    }
}

/// The outcome of a reply from `remote` for a recipient.
pub fn outcome(remote: Option<&str>, reply: RemoteReply) -> AttemptOutcome {
    let attempt = backstop_types::Attempt {
        remote_host: remote.map(str::to_owned),
        reply,
    };
    match attempt.reply.code / 100 {
        2 => AttemptOutcome::Delivered(attempt),
        5 => AttemptOutcome::Permanent(attempt),
        _ => AttemptOutcome::Transient(attempt),
    }
}

fn made_up(
    retry: Retry,
    source: Source,
    stage: Stage,
    code: u16,
    status: EnhancedStatus,
    text: String,
) -> ClientError {
    ClientError {
        retry,
        source,
        stage,
        reply: RemoteReply {
            code,
            status: Some(status),
            text,
        },
    }
}

fn stage_name(stage: Stage) -> &'static str {
    match stage {
        Stage::Connect => "connecting",
        Stage::Greeting => "waiting for the greeting",
        Stage::Ehlo => "after EHLO",
        Stage::Tls => "after STARTTLS",
        Stage::Auth => "after AUTH",
        Stage::Mail => "after MAIL",
        Stage::Rcpt => "after RCPT",
        Stage::Data => "after DATA",
        Stage::End => "after the end of the message",
    }
}
