//! A minimal HTTP/1.1 server side for pages served on loopback behind a reverse proxy, to
//! peers that may be hostile.
//!
//! One request per connection: [`read_request`] reads a head and a `Content-Length` body
//! under [`Limits`], refusing anything ambiguous (obs-fold, `Transfer-Encoding`, two
//! `Content-Length`s, control characters, targets other than origin-form), so a request
//! cannot be read differently here and in the proxy. The response always closes the
//! connection ([`Response::write_to`]), and [`serve_one`] puts a deadline on the whole
//! exchange.

mod percent;
mod request;
mod response;
mod serve;

pub use percent::percent_encode;
pub use request::{read_request, Method, Request};
pub use response::{Response, CSP};
pub use serve::serve_one;

/// How much a request may carry. Exceeding one is an [`HttpError`], never a truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The longest head, in octets: the request line, the header fields and the line ends.
    pub max_head: usize,
    /// The longest body, in octets, as announced by `Content-Length`.
    pub max_body: usize,
    /// The most header fields.
    pub max_headers: usize,
}

impl Default for Limits {
    /// A 16 KiB head, a 64 KiB body and 64 header fields: plenty for forms and links.
    fn default() -> Limits {
        Limits {
            max_head: 16 * 1024,
            max_body: 64 * 1024,
            max_headers: 64,
        }
    }
}

/// Why a request was refused. The messages are fixed texts, with nothing of the request in
/// them, so they may be sent back and logged as they are.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The peer closed the connection before sending anything: no response is due.
    #[error("the connection closed before a request")]
    Closed,
    /// Reading failed: no response can be sent.
    #[error("reading the request failed: {0}")]
    Io(#[source] std::io::Error),
    /// The connection ended inside the head or the body.
    #[error("the request ended early")]
    Truncated,
    /// The head is longer than [`Limits::max_head`].
    #[error("the request head is too large")]
    HeadTooLarge,
    /// More header fields than [`Limits::max_headers`].
    #[error("the request has too many header fields")]
    TooManyHeaders,
    /// The request line is not `METHOD SP target SP HTTP/1.x`, or holds a control character.
    #[error("the request line is malformed")]
    BadRequestLine,
    /// The target is not in origin form (`/path?query`).
    #[error("the request target must be a path")]
    BadTarget,
    /// The path has an invalid percent escape, is not UTF-8, or decodes to NUL, CR or LF.
    #[error("the request path is malformed")]
    BadPath,
    /// A header field with a bad name, a control character, or a value that is not UTF-8.
    #[error("a header field is malformed")]
    BadHeader,
    /// A header line continues the previous one (obs-fold), which RFC 9112 lets us refuse.
    #[error("folded header lines are not accepted")]
    ObsFold,
    /// `Host` given more than once.
    #[error("the Host header field is given more than once")]
    DuplicateHost,
    /// `Transfer-Encoding` of any value: only `Content-Length` bodies are read.
    #[error("Transfer-Encoding is not supported")]
    TransferEncoding,
    /// `Content-Length` given more than once, even with equal values.
    #[error("Content-Length is given more than once")]
    DuplicateContentLength,
    /// `Content-Length` that is not a decimal number.
    #[error("Content-Length is malformed")]
    BadContentLength,
    /// `Content-Length` beyond [`Limits::max_body`].
    #[error("the request body is too large")]
    BodyTooLarge,
}

impl HttpError {
    /// The status to answer with: 400, 413, 431 or 501. [`HttpError::Closed`] and
    /// [`HttpError::Io`] say 400, but [`HttpError::responds`] is false for them.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::BodyTooLarge => 413,
            HttpError::TransferEncoding => 501,
            HttpError::Closed
            | HttpError::Io(_)
            | HttpError::Truncated
            | HttpError::BadRequestLine
            | HttpError::BadTarget
            | HttpError::BadPath
            | HttpError::BadHeader
            | HttpError::ObsFold
            | HttpError::DuplicateHost
            | HttpError::DuplicateContentLength
            | HttpError::BadContentLength => 400,
        }
    }

    /// Whether a response should be sent: false when the connection is gone or unusable.
    pub fn responds(&self) -> bool {
        !matches!(self, HttpError::Closed | HttpError::Io(_))
    }
}

#[cfg(test)]
mod tests;
