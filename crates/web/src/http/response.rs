//! Responses, always with the hardening headers and `Connection: close`.

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// The Content-Security-Policy of every response: nothing but our own stylesheet and
/// images, forms posting back to us, no scripts, no framing.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
    form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The header fields [`Response::write_to`] always writes itself, in this order after
/// `Content-Length` and `Connection`.
const HARDENING: [(&str, &str); 5] = [
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", CSP),
];

/// Header fields a response may not set: the ones written by [`Response::write_to`], the
/// framing ones, and `Location` (no redirects: a link-following page must not become an
/// open redirector).
const RESERVED: [&str; 9] = [
    "content-length",
    "connection",
    "transfer-encoding",
    "location",
    "cache-control",
    "referrer-policy",
    "x-content-type-options",
    "x-frame-options",
    "content-security-policy",
];

/// A response, written by [`Response::write_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code, 100 to 599; anything else is sent as 500.
    pub status: u16,
    /// Header fields besides the ones [`Response::write_to`] always writes; reserved names
    /// (`Location`, `Content-Length`, the hardening fields, ...) are left out when written,
    /// and CR, LF and NUL are stripped from values.
    pub headers: Vec<(&'static str, String)>,
    /// The body; not sent for `HEAD`, 1xx, 204 and 304.
    pub body: Vec<u8>,
}

impl Response {
    /// An HTML page (`text/html; charset=utf-8`).
    pub fn html(status: u16, body: String) -> Response {
        Response::with_type(status, "text/html; charset=utf-8", body.into_bytes())
    }

    /// Plain text (`text/plain; charset=utf-8`).
    pub fn text(status: u16, body: &str) -> Response {
        Response::with_type(
            status,
            "text/plain; charset=utf-8",
            body.as_bytes().to_vec(),
        )
    }

    /// A stylesheet (`text/css; charset=utf-8`).
    pub fn css(status: u16, body: &str) -> Response {
        Response::with_type(status, "text/css; charset=utf-8", body.as_bytes().to_vec())
    }

    /// A JSON document (`application/json`).
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response::with_type(status, "application/json", body)
    }

    /// This response with one more header field. `name` must be a token; CR, LF and NUL in
    /// `value` are a bug of the caller (asserted in debug builds) and are stripped.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        let mut value = value.into();
        debug_assert!(is_token(name), "bad header name {name:?}");
        debug_assert!(
            !value.contains(['\r', '\n', '\0']),
            "CR, LF or NUL in the value of {name}"
        );
        value.retain(|c| !matches!(c, '\r' | '\n' | '\0'));
        self.headers.push((name, value));
        self
    }

    /// Writes the response and flushes: the status line, `Content-Length`,
    /// `Connection: close`, the hardening fields, this response's own fields, and the body
    /// unless `head_only` (the answer to `HEAD`, whose `Content-Length` is the body's).
    pub async fn write_to<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        head_only: bool,
    ) -> io::Result<()> {
        w.write_all(&self.encode(head_only)).await?;
        w.flush().await
    }

    fn with_type(status: u16, content_type: &str, body: Vec<u8>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body,
        }
    }

    /// The octets [`Response::write_to`] sends.
    fn encode(&self, head_only: bool) -> Vec<u8> {
        let status = if (100..=599).contains(&self.status) {
            self.status
        } else {
            500
        };
        let bodyless = matches!(status, 100..=199 | 204 | 304);
        let mut out = Vec::with_capacity(512 + self.body.len());
        out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason(status)).as_bytes());
        if !bodyless {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"Connection: close\r\n");
        for (name, value) in HARDENING {
            push_field(&mut out, name, value);
        }
        for (name, value) in &self.headers {
            let reserved = RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name));
            if !reserved && is_token(name) {
                push_field(&mut out, name, value);
            }
        }
        out.extend_from_slice(b"\r\n");
        if !head_only && !bodyless {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// `name: value` CRLF, with CR, LF and NUL left out of the value.
fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend(
        value
            .bytes()
            .filter(|b| !matches!(b, b'\r' | b'\n' | b'\0')),
    );
    out.extend_from_slice(b"\r\n");
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The reason phrase of the statuses we send; empty (allowed) for the others.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}
