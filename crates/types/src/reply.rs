//! SMTP replies. Every reply backstop sends is built by a constructor in this file, so the
//! codes, enhanced status codes (RFC 3463, RFC 2034) and texts are all in one place.

use std::fmt;

use crate::QueueId;

/// An enhanced mail system status code `class.subject.detail` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedStatus(pub u8, pub u16, pub u16);

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// An SMTP reply: a code, an enhanced status code and one or more lines of text.
///
/// The greeting and the EHLO reply carry no enhanced status code (RFC 2034 section 3); every
/// other reply does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    status: Option<EnhancedStatus>,
    lines: Vec<String>,
    /// The check that decided a refusal (`relay`, `greylist`, `rspamd`, ...), for log lines
    /// and metrics; never sent. `None`: the protocol itself (syntax, sequence, ...).
    check: Option<&'static str>,
}

impl Reply {
    fn new(code: u16, status: EnhancedStatus, text: impl Into<String>) -> Reply {
        let text: String = text.into();
        // The guard below every reply: text that names what a client or a peer sent (a user
        // name, a From: address) can never end the line early or hide a control sequence.
        let text = if text.chars().any(char::is_control) {
            text.chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect()
        } else {
            text
        };
        Reply {
            code,
            status: Some(status),
            lines: vec![text],
            check: None,
        }
    }

    /// This reply, as the decision of `check` (see [`Reply::check`]).
    pub fn decided_by(mut self, check: &'static str) -> Reply {
        self.check = Some(check);
        self
    }

    /// The check that decided this refusal, for log lines and metrics: `relay`, `recipients`,
    /// `greylist`, `rate`, `batv`, `provenance`, `dnsbl`, `spf`, `dmarc`, `iprev`, `auth`,
    /// `connections`, `limits`, `loop`, `content` (or the scanner: `rspamd`, `clamd`, `milter`,
    /// `rule`), `next_hop`, `resources`; `protocol` for everything else.
    pub fn check(&self) -> &'static str {
        self.check.unwrap_or("protocol")
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    pub fn status(&self) -> Option<EnhancedStatus> {
        self.status
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 4xx: the client should try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// Appends the reply in wire form, `code[-| ]status text CRLF` per line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            // Writing into a Vec cannot fail.
            let _ = match self.status {
                Some(status) => write!(out, "{}{sep}{status} {line}\r\n", self.code),
                None => write!(out, "{}{sep}{line}\r\n", self.code),
            };
        }
    }

    // --- Connection -------------------------------------------------------------------------

    /// `220` banner (RFC 5321 4.2: no enhanced status code).
    pub fn greeting(hostname: &str) -> Reply {
        Reply {
            code: 220,
            status: None,
            lines: vec![format!("{hostname} ESMTP backstop")],
            check: None,
        }
    }

    /// The EHLO reply: the first line greets, the others are the capabilities.
    pub fn ehlo(hostname: &str, client: &str, capabilities: Vec<String>) -> Reply {
        let mut lines = Vec::with_capacity(capabilities.len() + 1);
        lines.push(format!("{hostname} Hello {client}"));
        lines.extend(capabilities);
        Reply {
            code: 250,
            status: None,
            lines,
            check: None,
        }
    }

    pub fn helo(hostname: &str, client: &str) -> Reply {
        Reply::new(
            250,
            EnhancedStatus(2, 0, 0),
            format!("{hostname} Hello {client}"),
        )
    }

    pub fn bye() -> Reply {
        Reply::new(221, EnhancedStatus(2, 0, 0), "Bye")
    }

    pub fn ok() -> Reply {
        Reply::new(250, EnhancedStatus(2, 0, 0), "Ok")
    }

    pub fn help() -> Reply {
        Reply::new(
            214,
            EnhancedStatus(2, 0, 0),
            "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH; see RFC 5321",
        )
    }

    /// VRFY never tells whether a user exists (RFC 5321 3.5.3, 7.3).
    pub fn cannot_verify() -> Reply {
        Reply::new(
            252,
            EnhancedStatus(2, 5, 0),
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    pub fn too_many_connections() -> Reply {
        Reply::new(
            421,
            EnhancedStatus(4, 7, 0),
            "Too many connections, try again later",
        )
        .decided_by("connections")
    }

    pub fn too_many_connections_from_ip() -> Reply {
        Reply::new(
            421,
            EnhancedStatus(4, 7, 0),
            "Too many connections from your address, try again later",
        )
        .decided_by("connections")
    }

    pub fn too_many_errors() -> Reply {
        Reply::new(
            421,
            EnhancedStatus(4, 7, 0),
            "Too many errors, closing connection",
        )
    }

    pub fn timeout() -> Reply {
        Reply::new(
            421,
            EnhancedStatus(4, 4, 2),
            "Timeout exceeded, closing connection",
        )
    }

    pub fn shutting_down() -> Reply {
        Reply::new(
            421,
            EnhancedStatus(4, 3, 2),
            "Service shutting down, try again later",
        )
    }

    // --- Protocol errors --------------------------------------------------------------------

    pub fn unknown_command() -> Reply {
        Reply::new(500, EnhancedStatus(5, 5, 2), "Command unrecognized")
    }

    pub fn line_too_long(limit: usize) -> Reply {
        Reply::new(
            500,
            EnhancedStatus(5, 5, 2),
            format!("Line too long (the limit is {limit} octets)"),
        )
    }

    /// A command line that ends in a bare LF instead of CRLF (RFC 5321 2.3.8).
    pub fn bare_newline_in_command() -> Reply {
        Reply::new(
            500,
            EnhancedStatus(5, 5, 2),
            "Command refused: lines must end with CRLF, not a bare CR or LF",
        )
    }

    /// A command line that is not UTF-8 (RFC 6531 3.3: even with SMTPUTF8, only UTF-8).
    pub fn not_utf8() -> Reply {
        Reply::new(
            500,
            EnhancedStatus(5, 5, 2),
            "Command refused: it is not valid UTF-8",
        )
    }

    /// HELO or EHLO with a name no host has (control characters, spaces, over 255 octets).
    pub fn invalid_helo() -> Reply {
        Reply::new(501, EnhancedStatus(5, 5, 2), "Invalid HELO/EHLO name")
    }

    /// `BDAT` whose size is no number that fits: the chunk cannot be told from what follows,
    /// so the connection is closed after this.
    pub fn bad_chunk_size() -> Reply {
        Reply::new(
            501,
            EnhancedStatus(5, 5, 4),
            "Syntax: BDAT chunk-size [LAST] with a valid size; closing the connection",
        )
    }

    /// An ORCPT parameter that is malformed or carries control characters.
    pub fn bad_orcpt(why: &str) -> Reply {
        Reply::new(
            501,
            EnhancedStatus(5, 5, 4),
            format!("Invalid ORCPT parameter: {}", printable(why)),
        )
    }

    pub fn syntax_error(expected: &str) -> Reply {
        Reply::new(501, EnhancedStatus(5, 5, 4), format!("Syntax: {expected}"))
    }

    pub fn not_implemented(command: &str) -> Reply {
        Reply::new(
            502,
            EnhancedStatus(5, 5, 1),
            format!("{command} not implemented"),
        )
    }

    pub fn bad_sequence(why: &str) -> Reply {
        Reply::new(503, EnhancedStatus(5, 5, 1), why.to_owned())
    }

    pub fn unsupported_parameter(param: &str) -> Reply {
        Reply::new(
            555,
            EnhancedStatus(5, 5, 4),
            format!("Unsupported parameter {param}"),
        )
    }

    pub fn invalid_parameter(param: &str) -> Reply {
        Reply::new(
            501,
            EnhancedStatus(5, 5, 4),
            format!("Invalid parameter {param}"),
        )
    }

    /// Input arrived where the client had to wait for our reply (RFC 2920, RFC 5321 4.3).
    pub fn pipelining_violation() -> Reply {
        Reply::new(
            554,
            EnhancedStatus(5, 5, 0),
            "Protocol synchronization error: input sent before our reply",
        )
    }

    /// Bytes sent behind STARTTLS before the TLS handshake (CVE-2011-0411).
    pub fn pipelined_after_starttls() -> Reply {
        Reply::new(
            554,
            EnhancedStatus(5, 5, 0),
            "Protocol synchronization error: input sent after STARTTLS before the TLS handshake",
        )
    }

    pub fn early_talker() -> Reply {
        Reply::new(
            554,
            EnhancedStatus(5, 5, 0),
            "Protocol synchronization error: input sent before the greeting",
        )
    }

    // --- STARTTLS and AUTH ------------------------------------------------------------------

    pub fn ready_for_tls() -> Reply {
        Reply::new(220, EnhancedStatus(2, 0, 0), "Ready to start TLS")
    }

    pub fn tls_not_available() -> Reply {
        Reply::new(454, EnhancedStatus(4, 7, 0), "TLS not available")
    }

    pub fn tls_already_active() -> Reply {
        Reply::new(503, EnhancedStatus(5, 5, 1), "TLS already active")
    }

    pub fn auth_challenge(base64: &str) -> Reply {
        Reply {
            code: 334,
            status: None,
            lines: vec![base64.to_owned()],
            check: None,
        }
    }

    pub fn auth_succeeded() -> Reply {
        Reply::new(235, EnhancedStatus(2, 7, 0), "Authentication successful")
    }

    pub fn auth_failed() -> Reply {
        Reply::new(
            535,
            EnhancedStatus(5, 7, 8),
            "Authentication credentials invalid",
        )
        .decided_by("auth")
    }

    pub fn auth_temporary_failure() -> Reply {
        Reply::new(
            454,
            EnhancedStatus(4, 7, 0),
            "Temporary authentication failure",
        )
        .decided_by("auth")
    }

    /// Too many failed logins from this client or for this name: no password is checked until
    /// the window has passed.
    pub fn auth_throttled() -> Reply {
        Reply::new(
            454,
            EnhancedStatus(4, 7, 0),
            "Too many failed logins, try again later",
        )
        .decided_by("auth")
    }

    pub fn auth_cancelled() -> Reply {
        Reply::new(501, EnhancedStatus(5, 0, 0), "Authentication cancelled")
    }

    pub fn auth_bad_response() -> Reply {
        Reply::new(
            501,
            EnhancedStatus(5, 5, 2),
            "Invalid base64 data in authentication",
        )
    }

    pub fn auth_mechanism_unsupported() -> Reply {
        Reply::new(
            504,
            EnhancedStatus(5, 5, 4),
            "Unrecognized authentication mechanism",
        )
    }

    /// AUTH on a listener that offers it only under TLS (RFC 4954 4: 538 5.7.11).
    pub fn encryption_required() -> Reply {
        Reply::new(
            538,
            EnhancedStatus(5, 7, 11),
            "Encryption required for requested authentication mechanism",
        )
        .decided_by("auth")
    }

    pub fn auth_not_offered() -> Reply {
        Reply::new(
            503,
            EnhancedStatus(5, 5, 1),
            "AUTH not available on this port",
        )
    }

    pub fn auth_required() -> Reply {
        Reply::new(530, EnhancedStatus(5, 7, 0), "Authentication required").decided_by("auth")
    }

    // --- The transaction --------------------------------------------------------------------

    /// An authenticated user used an envelope sender that is not theirs.
    pub fn sender_not_owned(user: &str) -> Reply {
        Reply::new(
            553,
            EnhancedStatus(5, 7, 1),
            format!("Sender address rejected: not owned by user {user}"),
        )
        .decided_by("auth")
    }

    /// An authenticated user's message names, in its `From:` header, an address the user does
    /// not own (checked at the end of DATA, as the envelope sender is at MAIL).
    pub fn from_not_owned(user: &str, from: &str) -> Reply {
        Reply::new(
            550,
            EnhancedStatus(5, 7, 1),
            format!(
                "From: address {} rejected: not owned by user {user}",
                printable(from)
            ),
        )
        .decided_by("auth")
    }

    pub fn sender_ok() -> Reply {
        Reply::new(250, EnhancedStatus(2, 1, 0), "Sender ok")
    }

    pub fn recipient_ok() -> Reply {
        Reply::new(250, EnhancedStatus(2, 1, 5), "Recipient ok")
    }

    pub fn bad_sender_syntax() -> Reply {
        Reply::new(501, EnhancedStatus(5, 1, 7), "Bad sender address syntax")
    }

    /// A local part that cannot be a mailbox here (a Maildir folder name): refused at RCPT,
    /// never accepted and failed later.
    pub fn mailbox_name_not_allowed() -> Reply {
        Reply::new(
            550,
            EnhancedStatus(5, 1, 3),
            "Recipient address rejected: mailbox name not allowed",
        )
        .decided_by("recipients")
    }

    /// A message with more `Received:` fields than the hop limit: a mail loop (RFC 5321 6.3).
    pub fn too_many_hops(limit: usize) -> Reply {
        Reply::new(
            554,
            EnhancedStatus(5, 4, 6),
            format!("Too many hops (more than {limit} Received: fields): mail loop"),
        )
        .decided_by("loop")
    }

    pub fn bad_recipient_syntax() -> Reply {
        Reply::new(501, EnhancedStatus(5, 1, 3), "Bad recipient address syntax")
    }

    /// A non-ASCII address without `SMTPUTF8` on MAIL FROM (RFC 6531 3.5).
    pub fn smtputf8_required() -> Reply {
        Reply::new(
            553,
            EnhancedStatus(5, 6, 7),
            "Non-ASCII address requires the SMTPUTF8 parameter",
        )
    }

    pub fn too_many_recipients(limit: usize) -> Reply {
        Reply::new(
            452,
            EnhancedStatus(4, 5, 3),
            format!("Too many recipients (at most {limit} per message)"),
        )
        .decided_by("limits")
    }

    /// No such local recipient (RFC 3463 5.1.1).
    pub fn unknown_recipient() -> Reply {
        Reply::new(
            550,
            EnhancedStatus(5, 1, 1),
            "Recipient address rejected: user unknown",
        )
        .decided_by("recipients")
    }

    /// The recipient source could not answer: never accept on a failed lookup.
    pub fn recipient_lookup_failed() -> Reply {
        Reply::new(
            451,
            EnhancedStatus(4, 4, 3),
            "Recipient lookup failed, try again later",
        )
        .decided_by("recipients")
    }

    /// Greylisting: a real mail server retries; most spam software does not.
    pub fn greylisted(retry_after: u64) -> Reply {
        Reply::new(
            451,
            EnhancedStatus(4, 7, 1),
            format!("Greylisted, please try again in {retry_after} seconds"),
        )
        .decided_by("greylist")
    }

    /// A bounce to an address whose mail always leaves with a BATV-tagged return path, without
    /// a valid tag (`why`): it answers mail we never sent.
    pub fn bounce_refused(why: &str) -> Reply {
        Reply::new(
            550,
            EnhancedStatus(5, 7, 1),
            format!("Bounce refused: {why}; we did not send the message it answers"),
        )
        .decided_by("batv")
    }

    /// The From domain's DMARC policy rejects the message (RFC 7489 6.6.3).
    pub fn dmarc_rejected(domain: &str) -> Reply {
        Reply::new(
            550,
            EnhancedStatus(5, 7, 1),
            format!("Message rejected by the DMARC policy of {domain}"),
        )
        .decided_by("dmarc")
    }

    /// SPF fail for the envelope sender's domain (RFC 7372: 5.7.23).
    pub fn spf_failed(domain: &str) -> Reply {
        Reply::new(
            550,
            EnhancedStatus(5, 7, 23),
            format!("SPF check failed: {domain} does not allow this client to send its mail"),
        )
        .decided_by("spf")
    }

    /// The client is on a DNS blocklist (the wording of Postfix's reject_rbl_client).
    pub fn blocklisted(ip: std::net::IpAddr, zone: &str) -> Reply {
        Reply::new(
            554,
            EnhancedStatus(5, 7, 1),
            format!("Service unavailable; client [{ip}] blocked using {zone}"),
        )
        .decided_by("dnsbl")
    }

    /// The client's address has no PTR name that resolves back to it (RFC 7372: 5.7.25).
    pub fn reverse_dns_failed(ip: std::net::IpAddr) -> Reply {
        Reply::new(
            550,
            EnhancedStatus(5, 7, 25),
            format!("Reverse DNS of {ip} does not resolve back to it"),
        )
        .decided_by("iprev")
    }

    /// SPF or DMARC could not be checked for now (a DNS failure).
    pub fn sender_auth_unavailable() -> Reply {
        Reply::new(
            451,
            EnhancedStatus(4, 7, 24),
            "Sender authentication could not be completed (DNS), try again later",
        )
        .decided_by("sender_auth")
    }

    /// A bounce returning a message (by its Message-ID) that we never sent: backscatter.
    pub fn bounce_not_ours() -> Reply {
        Reply::new(
            550,
            EnhancedStatus(5, 7, 1),
            "Bounce refused: it returns a message we never sent",
        )
        .decided_by("provenance")
    }

    /// A bounce whose provenance cannot be checked now (the site's state does not answer):
    /// one we cannot check is not accepted.
    pub fn bounce_provenance_unavailable() -> Reply {
        Reply::new(
            451,
            EnhancedStatus(4, 3, 0),
            "Bounce cannot be checked now, try again later",
        )
        .decided_by("provenance")
    }

    /// Over a rate limit (connections, messages or recipients in a time window).
    pub fn rate_limited() -> Reply {
        Reply::new(
            451,
            EnhancedStatus(4, 7, 1),
            "Rate limit exceeded, slow down and try again later",
        )
        .decided_by("rate")
    }

    /// Too many new connections from one address in a short time.
    pub fn connection_rate_limited() -> Reply {
        Reply::new(
            421,
            EnhancedStatus(4, 7, 0),
            "Too many connections from your address in a short time, try again later",
        )
        .decided_by("rate")
    }

    /// A check could not be made: try again later.
    pub fn check_unavailable() -> Reply {
        Reply::new(
            451,
            EnhancedStatus(4, 3, 0),
            "Temporary failure, try again later",
        )
        .decided_by("resources")
    }

    pub fn relay_denied() -> Reply {
        Reply::new(554, EnhancedStatus(5, 7, 1), "Relay access denied").decided_by("relay")
    }

    pub fn message_too_big(limit: u64) -> Reply {
        Reply::new(
            552,
            EnhancedStatus(5, 3, 4),
            format!("Message size exceeds the fixed maximum of {limit} octets"),
        )
        .decided_by("limits")
    }

    /// A message larger than the spool threshold whose header section does not end within it
    /// (Exim's `header_maxsize` refuses such a message too).
    pub fn header_too_large(limit: u64) -> Reply {
        Reply::new(
            552,
            EnhancedStatus(5, 3, 4),
            format!("Message header section exceeds {limit} octets"),
        )
        .decided_by("limits")
    }

    pub fn start_data() -> Reply {
        Reply::new(
            354,
            EnhancedStatus(2, 0, 0),
            "End data with <CR><LF>.<CR><LF>",
        )
    }

    pub fn chunk_received(octets: usize) -> Reply {
        Reply::new(
            250,
            EnhancedStatus(2, 0, 0),
            format!("{octets} octets received"),
        )
    }

    /// The data held a bare CR, a bare LF or a NUL: the forms SMTP smuggling uses to hide an
    /// end-of-data marker (RFC 5321 2.3.8, 4.1.1.4).
    pub fn bad_line_endings() -> Reply {
        Reply::new(
            554,
            EnhancedStatus(5, 6, 0),
            "Message refused: bare CR, bare LF or NUL in the message data",
        )
    }

    /// The content checks found the message malformed or unwanted.
    pub fn content_refused(why: &str) -> Reply {
        Reply::new(
            550,
            EnhancedStatus(5, 6, 0),
            format!("Message refused: {why}"),
        )
        .decided_by("content")
    }

    /// A content rule or scanner refused the message, with a text safe to show.
    pub fn content_rejected(text: &str) -> Reply {
        Reply::new(550, EnhancedStatus(5, 7, 1), printable(text)).decided_by("content")
    }

    /// A content scanner asked for the message to be tried again later (a soft reject, a
    /// greylist, a milter's tempfail).
    pub fn content_deferred(text: &str) -> Reply {
        Reply::new(451, EnhancedStatus(4, 7, 1), printable(text)).decided_by("content")
    }

    /// The virus scanner found `signature` (its name only; the text stays printable).
    pub fn virus_found(signature: &str) -> Reply {
        Reply::new(
            554,
            EnhancedStatus(5, 7, 0),
            format!("Message contains a virus ({})", printable(signature)),
        )
        .decided_by("content")
    }

    /// A content check could not be made in time (a scanner down, slow or broken): the
    /// client tries again later; the message is never accepted unchecked.
    pub fn content_check_unavailable() -> Reply {
        Reply::new(
            451,
            EnhancedStatus(4, 7, 1),
            "Content check unavailable, try again later",
        )
        .decided_by("content")
    }

    /// A scanner's own reply (a milter's SMFIR_REPLYCODE): `code` must be 4xx or 5xx, else
    /// `None`. The enhanced status is taken from the text when it starts with one of the
    /// same class, and made up from the code otherwise.
    pub fn from_scanner(code: u16, text: &str) -> Option<Reply> {
        if !(400..600).contains(&code) {
            return None;
        }
        let class = (code / 100) as u8;
        let text = text.trim();
        let parsed = text.split_once(' ').and_then(|(first, rest)| {
            let mut parts = first.split('.');
            let status = EnhancedStatus(
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
            );
            (parts.next().is_none() && status.0 == class).then_some((status, rest))
        });
        let (status, text) = parsed.unwrap_or((EnhancedStatus(class, 7, 1), text));
        Some(Reply::new(code, status, printable(text)).decided_by("content"))
    }

    /// A next hop's reply, passed on to our client (proxy mode): its code and enhanced status
    /// (made up from the code's class when it sent none), its text made safe. A code that is
    /// not 2xx, 4xx or 5xx becomes 451 4.5.0.
    pub fn from_next_hop(code: u16, status: Option<EnhancedStatus>, text: &str) -> Reply {
        let class = (code / 100) as u8;
        if ![2, 4, 5].contains(&class) || code >= 600 {
            return Reply::new(
                451,
                EnhancedStatus(4, 5, 0),
                format!("The next hop answered {code}; try again later"),
            );
        }
        let status = status
            .filter(|s| s.0 == class)
            .unwrap_or(EnhancedStatus(class, 0, 0));
        Reply::new(code, status, printable(text)).decided_by("next_hop")
    }

    /// Proxied and queued recipients do not mix in one transaction (proxy mode).
    pub fn separate_transaction() -> Reply {
        Reply::new(
            451,
            EnhancedStatus(4, 5, 3),
            "This recipient must go in a separate transaction; send it again after this one",
        )
    }

    /// The next hop of a proxied domain cannot be reached.
    pub fn next_hop_unavailable() -> Reply {
        Reply::new(
            451,
            EnhancedStatus(4, 4, 1),
            "The destination server cannot be reached, try again later",
        )
        .decided_by("next_hop")
    }

    /// A rule marked certain discards the message: the client is told it was taken.
    pub fn discarded() -> Reply {
        Reply::new(250, EnhancedStatus(2, 0, 0), "Ok")
    }

    pub fn queued(id: QueueId) -> Reply {
        Reply::new(250, EnhancedStatus(2, 0, 0), format!("Ok: queued as {id}"))
    }

    /// The disk is full (RFC 3463 4.3.1): the client keeps the message and tries later.
    pub fn insufficient_storage() -> Reply {
        Reply::new(
            452,
            EnhancedStatus(4, 3, 1),
            "Insufficient system storage, try again later",
        )
        .decided_by("resources")
    }

    /// The memory for messages in progress is used up (`[smtp] max_message_memory`): the
    /// client keeps the message and tries later.
    pub fn insufficient_memory() -> Reply {
        Reply::new(
            452,
            EnhancedStatus(4, 3, 1),
            "Insufficient system memory for messages in progress, try again later",
        )
        .decided_by("resources")
    }

    pub fn queue_unavailable() -> Reply {
        Reply::new(
            451,
            EnhancedStatus(4, 3, 0),
            "Message not accepted: queue write failed, try again later",
        )
        .decided_by("resources")
    }
}

impl fmt::Display for Reply {
    /// The reply as on the wire without the final CRLF, lines joined by `\n`; for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_to(&mut out);
        let text = String::from_utf8_lossy(&out);
        f.write_str(text.trim_end().replace("\r\n", "\n").as_str())
    }
}

/// `text` as one line of printable ASCII (other characters become `?`), at most 400 octets:
/// what an outside party says must not break the reply.
fn printable(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(400)
        .collect();
    if line.trim().is_empty() {
        line = "Message content rejected".to_owned();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_has_status_on_every_line() {
        let mut out = Vec::new();
        Reply::queued(QueueId(0xABC)).write_to(&mut out);
        assert_eq!(out, b"250 2.0.0 Ok: queued as 0000000000000ABC\r\n");

        let mut out = Vec::new();
        Reply::ehlo(
            "mx.test",
            "c.test",
            vec!["PIPELINING".into(), "SIZE 10".into()],
        )
        .write_to(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "250-mx.test Hello c.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn a_scanners_reply_keeps_its_code_and_status_but_not_its_control_characters() {
        let wire = |r: Option<Reply>| {
            let mut out = Vec::new();
            r.unwrap().write_to(&mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            wire(Reply::from_scanner(550, "5.7.1 Spam\r\nX")),
            "550 5.7.1 Spam??X\r\n"
        );
        // A status of another class than the code is not taken.
        assert_eq!(
            wire(Reply::from_scanner(451, "5.7.1 later")),
            "451 4.7.1 5.7.1 later\r\n"
        );
        assert_eq!(
            wire(Reply::from_scanner(554, "")),
            "554 5.7.1 Message content rejected\r\n"
        );
        assert_eq!(Reply::from_scanner(250, "ok"), None);
    }
}
