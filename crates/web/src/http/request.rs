//! Reading one request: the head line by line under [`Limits`], then a `Content-Length` body.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use super::percent::{decode_pairs, percent_decode};
use super::{HttpError, Limits};

/// A request method. Methods are case-sensitive: `get` is [`Method::Other`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `HEAD`: answered like `GET`, without the body.
    Head,
    /// Any other method, a token as sent.
    Other(String),
}

/// One request, read and checked by [`read_request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, percent-decoded, without the query: starts with `/`, is UTF-8, and holds no
    /// NUL, CR or LF. Otherwise as sent: `..` segments and decoded `/` are the handler's to
    /// refuse.
    pub path: String,
    /// The query's name-value pairs, decoded (see [`Request::form`]), in order.
    pub query: Vec<(String, String)>,
    /// The header fields in order: the name in lower case, the value without surrounding
    /// whitespace.
    pub headers: Vec<(String, String)>,
    /// Exactly `Content-Length` octets; empty without one.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of the first header field called `name` (in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of the first query parameter called `name` (case-sensitive).
    pub fn query_value(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body's name-value pairs when it is `application/x-www-form-urlencoded` (`+` is a
    /// space, `%XX` an octet); a pair with a bad escape or invalid UTF-8 is dropped, not
    /// repaired. Empty for any other `Content-Type`, so a cross-site `text/plain` post cannot
    /// pass for a form.
    pub fn form(&self) -> Vec<(String, String)> {
        let is_form = self.header("content-type").is_some_and(|ct| {
            let media_type = ct.split(';').next().unwrap_or_default().trim();
            media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
        if is_form {
            decode_pairs(&self.body)
        } else {
            Vec::new()
        }
    }

    /// The value of the first cookie called `name` (case-sensitive), from any `Cookie` field.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }
}

/// Reads one request from `reader`, under `limits`.
///
/// Lines end in CRLF or a bare LF. The reader is buffered internally and may be read past
/// the end of the request: the connection serves one request and is closed after the
/// response. [`HttpError::Closed`] when the peer sent nothing at all.
pub async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: &Limits,
) -> Result<Request, HttpError> {
    let mut reader = BufReader::new(reader);
    let mut head = HeadReader {
        used: 0,
        max: limits.max_head,
    };

    let line = head.next_line(&mut reader).await?;
    let (method, target) = parse_request_line(&line)?;
    let (path, query) = parse_target(target)?;

    let mut headers = Vec::new();
    loop {
        let line = head.next_line(&mut reader).await?;
        if line.is_empty() {
            break;
        }
        if headers.len() == limits.max_headers {
            return Err(HttpError::TooManyHeaders);
        }
        headers.push(parse_header(&line)?);
    }

    let body_len = body_length(&headers, limits)?;
    let mut body = vec![0; body_len];
    reader.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            HttpError::Truncated
        } else {
            HttpError::Io(e)
        }
    })?;

    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

/// The head's budget across its lines.
struct HeadReader {
    used: usize,
    max: usize,
}

impl HeadReader {
    /// The next line, without its LF or CRLF.
    async fn next_line<B: AsyncBufRead + Unpin>(
        &mut self,
        reader: &mut B,
    ) -> Result<Vec<u8>, HttpError> {
        let budget = self.max.saturating_sub(self.used);
        let mut line = Vec::new();
        let n = (&mut *reader)
            .take(u64::try_from(budget).unwrap_or(u64::MAX))
            .read_until(b'\n', &mut line)
            .await
            .map_err(HttpError::Io)?;
        self.used += n;
        if line.pop() != Some(b'\n') {
            return Err(if n == budget {
                HttpError::HeadTooLarge
            } else if self.used == 0 {
                HttpError::Closed
            } else {
                HttpError::Truncated
            });
        }
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(line)
    }
}

/// `METHOD SP target SP HTTP/1.x`, in printable ASCII.
fn parse_request_line(line: &[u8]) -> Result<(Method, &str), HttpError> {
    if !line.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Err(HttpError::BadRequestLine);
    }
    let line = std::str::from_utf8(line).map_err(|_| HttpError::BadRequestLine)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::BadRequestLine);
    };
    let version_ok = version
        .strip_prefix("HTTP/1.")
        .is_some_and(|minor| minor.len() == 1 && minor.bytes().all(|b| b.is_ascii_digit()));
    if method.is_empty() || !method.bytes().all(is_tchar) || !version_ok {
        return Err(HttpError::BadRequestLine);
    }
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_owned()),
    };
    Ok((method, target))
}

/// Origin form only: `/path` with an optional `?query`, no fragment.
fn parse_target(target: &str) -> Result<(String, Vec<(String, String)>), HttpError> {
    if !target.starts_with('/') || target.contains('#') {
        return Err(HttpError::BadTarget);
    }
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    let path = percent_decode(raw_path.as_bytes(), false)
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|p| !p.contains(['\0', '\r', '\n']))
        .ok_or(HttpError::BadPath)?;
    Ok((path, decode_pairs(raw_query.as_bytes())))
}

/// `name: value`, with the name a token and the value free of control characters but HTAB.
fn parse_header(line: &[u8]) -> Result<(String, String), HttpError> {
    if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err(HttpError::ObsFold);
    }
    let colon = line
        .iter()
        .position(|b| *b == b':')
        .ok_or(HttpError::BadHeader)?;
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    if name.is_empty() || !name.iter().copied().all(is_tchar) {
        return Err(HttpError::BadHeader);
    }
    if value.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
        return Err(HttpError::BadHeader);
    }
    let value = std::str::from_utf8(value).map_err(|_| HttpError::BadHeader)?;
    let name = std::str::from_utf8(name).map_err(|_| HttpError::BadHeader)?;
    Ok((
        name.to_ascii_lowercase(),
        value.trim_matches([' ', '\t']).to_owned(),
    ))
}

/// The body's length from `Content-Length`; refuses `Transfer-Encoding` and any ambiguity.
fn body_length(headers: &[(String, String)], limits: &Limits) -> Result<usize, HttpError> {
    if headers.iter().any(|(n, _)| n == "transfer-encoding") {
        return Err(HttpError::TransferEncoding);
    }
    if headers.iter().filter(|(n, _)| n == "host").count() > 1 {
        return Err(HttpError::DuplicateHost);
    }
    let mut lengths = headers.iter().filter(|(n, _)| n == "content-length");
    let Some((_, value)) = lengths.next() else {
        return Ok(0);
    };
    if lengths.next().is_some() {
        return Err(HttpError::DuplicateContentLength);
    }
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadContentLength);
    }
    // All digits: a number too large for usize is certainly beyond the limit.
    match value.parse::<usize>() {
        Ok(n) if n <= limits.max_body => Ok(n),
        _ => Err(HttpError::BodyTooLarge),
    }
}

/// A token character (RFC 9110, section 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
