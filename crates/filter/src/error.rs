//! Why a content scanner gave no verdict. The pipeline turns any of them into `451 4.7.1`
//! (or lets the message through when the check's `on_error` says so) and logs which.

use crate::net::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The scanner could not be reached, or the connection failed.
    #[error("{scanner} {endpoint}: {source}")]
    Network {
        scanner: &'static str,
        endpoint: Endpoint,
        source: std::io::Error,
    },
    /// The conversation broke the scanner's protocol: an answer it does not allow, a request
    /// that could not be written (a value with a line break).
    #[error("{scanner} {endpoint}: {reason}")]
    Protocol {
        scanner: &'static str,
        endpoint: Endpoint,
        reason: String,
    },
    /// The whole run's deadline passed before it answered.
    #[error("no answer within the pipeline's deadline of {seconds}s")]
    Deadline { seconds: u64 },
    /// It asked for a change that would break the message.
    #[error("{0}")]
    BrokenChange(String),
    /// The check could not run here (its worker thread failed).
    #[error("{0}")]
    Local(String),
}

/// A login service (Dovecot's auth socket, an LDAP directory) that could not answer: the
/// client hears 454 and may try again. Never a failed login, which is `Login::Invalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(pub String);

/// A rate that is not `COUNT/WINDOW` (`"100/1h"`) above zero.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateSyntax {
    #[error("{0:?} is not a rate like \"100/1h\" or \"30/1m\"")]
    NotARate(String),
    #[error("{0:?}: the count and the window must be above zero")]
    Zero(String),
}

/// The DNS resolver could not be made from the settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("creating the DNS resolver: {0}")]
pub struct ResolverError(pub String);
