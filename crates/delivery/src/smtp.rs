//! The SMTP and LMTP client: one transaction to one next hop, with an outcome for every
//! recipient. LMTP (RFC 2033) differs in two places: LHLO instead of EHLO, and one reply per
//! accepted recipient after the data instead of one for all.
//!
//! Blocking I/O (the delivery pass runs on the blocking pool), with the timeouts of RFC 5321
//! 4.5.3.2 per step. What the server offers is used: PIPELINING (MAIL, every RCPT and DATA in
//! one write), CHUNKING (`BDAT`), SIZE (a message over the limit is not sent), 8BITMIME and
//! SMTPUTF8 (a message that needs one the server lacks fails with a clear status), and DSN
//! (NOTIFY, ORCPT, RET and ENVID passed on).
//!
//! TLS per [`TlsPolicy`]: by default STARTTLS is used whenever offered and the certificate is
//! not verified (Postfix's `may`: an unauthenticated encrypted channel is still better than
//! plain text), but the handshake signatures are; `require` refuses to go on without TLS and
//! verifies the certificate against the route's trust anchors and the next hop's name. Bytes a
//! server sends behind its `220` to STARTTLS are refused (CVE-2011-0411, client side). The
//! message is sent dot-stuffed; stored messages never hold a bare CR or LF (the session refuses
//! them), so none is ever sent.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use backstop_types::{
    Attempt, AttemptOutcome, BodyType, EnhancedStatus, Envelope, Notify, Recipient, RemoteReply,
    Ret, ReversePath,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

/// Where a next hop listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    /// A Unix socket, e.g. Dovecot's LMTP socket.
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// One next hop: where, and its name (for TLS verification and the logs).
#[derive(Debug, Clone)]
pub struct NextHop {
    pub endpoint: Endpoint,
    pub host: String,
}

/// How TLS is used with a next hop.
#[derive(Debug, Clone)]
pub enum TlsPolicy {
    /// Never STARTTLS (a Unix socket, or a peer known to be broken).
    Off,
    /// STARTTLS when offered, any certificate (the default).
    Opportunistic,
    /// STARTTLS or no delivery, with the certificate verified by this configuration.
    Require(Arc<ClientConfig>),
}

/// How to talk to next hops of a route.
#[derive(Debug, Clone)]
pub struct Client {
    /// Our name in EHLO/LHLO.
    pub helo: String,
    /// Speak LMTP (to a mailbox server such as Dovecot) instead of SMTP.
    pub lmtp: bool,
    pub tls: TlsPolicy,
    pub connect_timeout: Duration,
    /// The reply timeouts; [`Timeouts::RFC5321`] unless a test needs shorter ones.
    pub timeouts: Timeouts,
    /// Log in with SMTP AUTH (to a smarthost); only ever under TLS.
    pub auth: Option<Credentials>,
}

/// A user name and password for SMTP AUTH PLAIN.
#[derive(Clone)]
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
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// The greeting, EHLO, STARTTLS, MAIL and RCPT.
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

/// One message to send: the return path to give (maybe BATV-tagged), header fields to put on
/// top (a DKIM signature), and the stored message.
pub struct Message<'a> {
    pub sender: &'a ReversePath,
    pub envelope: &'a Envelope,
    pub prefix: &'a [u8],
    pub body: &'a [u8],
}

impl Message<'_> {
    fn len(&self) -> usize {
        self.prefix.len() + self.body.len()
    }
}

/// What a transaction with one next hop came to.
#[derive(Debug)]
pub struct Delivery {
    /// An outcome for every recipient (index in the envelope).
    pub outcomes: Vec<(usize, AttemptOutcome)>,
    /// The next hop failed before taking any recipient (connection, greeting, EHLO, TLS or
    /// MAIL refused for a passing reason): another host of the same destination may do better.
    pub try_next: bool,
    /// The next hop took the DSN parameters (it offered DSN): success reports are its to send.
    pub passed_on: bool,
}

/// Delivers `message` to `recipients` (index in the envelope, recipient) at `hop` in one
/// transaction.
pub fn deliver(
    client: &Client,
    hop: &NextHop,
    message: &Message<'_>,
    recipients: &[(usize, &Recipient)],
    pool: &Pool,
) -> Delivery {
    let remote = format!("{}[{}]", hop.host, hop.endpoint);
    let key = PoolKey::new(client, hop);
    let mut outcomes: Vec<(usize, Option<AttemptOutcome>)>;
    let mut reached_mail;
    let mut cached = pool.take(&key);
    let mut passed_on = false;
    let result = loop {
        outcomes = recipients.iter().map(|(i, _)| (*i, None)).collect();
        reached_mail = false;
        let reused = cached.is_some();
        let session = match cached.take() {
            Some(session) => Ok(session),
            None => open(client, hop, &remote),
        };
        let mut session = match session {
            Ok(session) => session,
            Err(e) => break Err(e),
        };
        let result = transaction(
            client,
            &mut session,
            &remote,
            message,
            recipients,
            &mut outcomes,
            &mut reached_mail,
        );
        match result {
            // The server closed the idle connection meanwhile: once more on a new one.
            Err(Failure::Io(_)) if reused && !reached_mail => {
                tracing::debug!(remote = %remote, "cached connection was closed; reconnecting");
                continue;
            }
            Err(Failure::Reply(r)) if reused && !reached_mail && r.code == 421 => {
                tracing::debug!(remote = %remote, "cached connection was closed; reconnecting");
                continue;
            }
            Ok(ending) => {
                passed_on = session.caps.dsn && !client.lmtp;
                pool.put(key, session, ending, client.timeouts);
                break Ok(());
            }
            Err(e) => {
                if matches!(e, Failure::Reply(_) | Failure::Local(_)) {
                    let _ = session.conn.command("QUIT");
                }
                break Err(e);
            }
        }
    };
    let (fallback, try_next) = match result {
        Ok(()) => (None, false),
        Err(Failure::Reply(reply)) => {
            let passing = reply.code / 100 != 5;
            (Some(outcome(&remote, reply)), !reached_mail && passing)
        }
        Err(Failure::Io(e)) => (
            Some(AttemptOutcome::Transient(attempt(
                &remote,
                RemoteReply {
                    code: 451,
                    status: Some(EnhancedStatus(4, 4, 1)),
                    text: format!("connection to {remote} failed: {e}"),
                },
            ))),
            !reached_mail,
        ),
        Err(Failure::Local(reply)) => (Some(outcome(&remote, reply)), false),
        Err(Failure::Tls(reply)) => (Some(outcome(&remote, reply)), true),
    };
    let outcomes = outcomes
        .into_iter()
        .map(|(i, o)| {
            let o = o.or_else(|| fallback.clone()).unwrap_or_else(|| {
                AttemptOutcome::Transient(attempt(
                    &remote,
                    RemoteReply {
                        code: 451,
                        status: Some(EnhancedStatus(4, 4, 2)),
                        text: "the transaction ended without a reply for this recipient".into(),
                    },
                ))
            });
            (i, o)
        })
        .collect();
    Delivery {
        outcomes,
        try_next,
        passed_on,
    }
}

/// What a next hop says of a recipient when asked (callahead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// It takes mail for the address (2xx to RCPT).
    Exists,
    /// It refuses the address for good (5xx to RCPT), with its reply.
    Unknown(RemoteReply),
    /// No answer to rely on: down, 4xx, or a protocol failure.
    Unavailable(String),
}

/// Asks `hop` whether it takes mail for `recipient`: EHLO (STARTTLS as the policy says), MAIL
/// FROM the probe sender (never `<>`: a null sender is what backscatter looks like), RCPT,
/// then RSET and QUIT. Nothing is sent. A cached session is not used: a probe must not change
/// the state of a real transaction.
pub fn probe(
    client: &Client,
    hop: &NextHop,
    sender: &backstop_types::Address,
    recipient: &backstop_types::Address,
) -> Probe {
    let remote = format!("{}[{}]", hop.host, hop.endpoint);
    let t = client.timeouts;
    let mut session = match open(client, hop, &remote) {
        Ok(session) => session,
        Err(e) => return Probe::Unavailable(describe(&remote, e)),
    };
    let asked = (|| -> Result<Probe, Failure> {
        session.conn.command(&format!("MAIL FROM:<{sender}>"))?;
        expect(session.conn.reply(t.command)?, 2)?;
        session.conn.command(&format!("RCPT TO:<{recipient}>"))?;
        let reply = session.conn.reply(t.command)?;
        Ok(match reply.code / 100 {
            2 => Probe::Exists,
            5 => Probe::Unknown(reply),
            _ => Probe::Unavailable(format!("{remote} said {} {}", reply.code, reply.text)),
        })
    })();
    let _ = session.conn.command("RSET");
    let _ = session.conn.reply(t.command);
    let _ = session.conn.command("QUIT");
    asked.unwrap_or_else(|e| Probe::Unavailable(describe(&remote, e)))
}

/// One transaction passed through to a next hop as the client speaks it (proxy mode): MAIL,
/// then each RCPT as it comes, then the message; every reply is the next hop's own, for the
/// client. SMTP only (an LMTP server answers per recipient at the end).
pub struct Passthrough {
    session: Session,
    remote: String,
    timeouts: Timeouts,
}

/// Why a pass-through could not go on.
#[derive(Debug)]
pub enum PassthroughError {
    /// The next hop refused (its reply, for the client).
    Refused(RemoteReply),
    /// It could not be reached or broke off: the client should try again later.
    Unavailable(String),
}

impl Passthrough {
    /// Connects to `hop` and says MAIL FROM `sender`.
    pub fn begin(
        client: &Client,
        hop: &NextHop,
        sender: &backstop_types::ReversePath,
    ) -> Result<Passthrough, PassthroughError> {
        let remote = format!("{}[{}]", hop.host, hop.endpoint);
        let unavailable = |remote: &str, e: Failure| match e {
            Failure::Reply(r) if r.code / 100 == 5 => PassthroughError::Refused(r),
            other => PassthroughError::Unavailable(describe(remote, other)),
        };
        let mut session = open(client, hop, &remote).map_err(|e| unavailable(&remote, e))?;
        let mail = format!("MAIL FROM:{sender}");
        let t = client.timeouts;
        let reply = (|| -> Result<RemoteReply, Failure> {
            session.conn.command(&mail)?;
            Ok(session.conn.reply(t.command)?)
        })()
        .map_err(|e| unavailable(&remote, e))?;
        if reply.code / 100 != 2 {
            let _ = session.conn.command("QUIT");
            return Err(PassthroughError::Refused(reply));
        }
        Ok(Passthrough {
            session,
            remote,
            timeouts: t,
        })
    }

    /// RCPT TO `recipient`: the next hop's reply.
    pub fn rcpt(&mut self, recipient: &Recipient) -> Result<RemoteReply, PassthroughError> {
        let command = rcpt_command(recipient, self.session.caps.dsn);
        self.exchange(&command)
    }

    /// DATA and the message (dot-stuffed): the next hop's final reply.
    pub fn data(&mut self, body: &[u8]) -> Result<RemoteReply, PassthroughError> {
        let reply = self.exchange("DATA")?;
        if reply.code / 100 != 3 {
            return Ok(reply);
        }
        let t = self.timeouts;
        let sent = (|| -> io::Result<RemoteReply> {
            self.session.conn.write_all(&dot_stuff(body, true))?;
            self.session.conn.reply(t.data_end)
        })();
        sent.map_err(|e| PassthroughError::Unavailable(format!("{}: {e}", self.remote)))
    }

    /// Ends the transaction and the connection.
    pub fn quit(mut self) {
        let _ = self.session.conn.command("QUIT");
        let _ = self.session.conn.reply(self.timeouts.command);
    }

    fn exchange(&mut self, command: &str) -> Result<RemoteReply, PassthroughError> {
        let t = self.timeouts;
        let answered = (|| -> io::Result<RemoteReply> {
            self.session.conn.command(command)?;
            self.session.conn.reply(t.command)
        })();
        answered.map_err(|e| PassthroughError::Unavailable(format!("{}: {e}", self.remote)))
    }
}

fn describe(remote: &str, failure: Failure) -> String {
    match failure {
        Failure::Reply(r) | Failure::Local(r) | Failure::Tls(r) => {
            format!("{remote} said {} {}", r.code, r.text)
        }
        Failure::Io(e) => format!("{remote}: {e}"),
    }
}

/// Why a transaction stopped before every recipient had its outcome.
enum Failure {
    /// The server refused something that applies to all remaining recipients.
    Reply(RemoteReply),
    /// We cannot send this message there (e.g. SMTPUTF8 not offered).
    Local(RemoteReply),
    /// TLS was required and could not be had with this host.
    Tls(RemoteReply),
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

fn local(code: u16, status: EnhancedStatus, text: String) -> Failure {
    Failure::Local(RemoteReply {
        code,
        status: Some(status),
        text,
    })
}

/// An open SMTP/LMTP session, ready for MAIL.
struct Session {
    conn: Connection,
    caps: Capabilities,
    opened: Instant,
}

/// Connects, reads the greeting, says EHLO (or LHLO) and starts TLS as the policy says.
fn open(client: &Client, hop: &NextHop, remote: &str) -> Result<Session, Failure> {
    let t = client.timeouts;
    let stream = match &hop.endpoint {
        Endpoint::Tcp(address) => {
            Stream::Tcp(TcpStream::connect_timeout(address, client.connect_timeout)?)
        }
        Endpoint::Unix(path) => Stream::Unix(UnixStream::connect(path)?),
    };
    stream.set_write_timeout(Some(t.data_block))?;
    let mut conn = Connection::Plain(BufReader::new(stream));
    expect(conn.reply(t.command)?, 2)?;
    let mut caps = ehlo(&mut conn, &client.helo, client.lmtp, t.command)?;
    match (&client.tls, caps.starttls) {
        (TlsPolicy::Off, _) | (TlsPolicy::Opportunistic, false) => {}
        (TlsPolicy::Require(_), false) => {
            return Err(Failure::Tls(RemoteReply {
                code: 451,
                status: Some(EnhancedStatus(4, 7, 4)),
                text: format!("TLS is required, but {remote} does not offer STARTTLS"),
            }));
        }
        (TlsPolicy::Opportunistic | TlsPolicy::Require(_), true) => {
            conn.command("STARTTLS")?;
            expect(conn.reply(t.command)?, 2)?;
            let config = match &client.tls {
                TlsPolicy::Require(config) => Arc::clone(config),
                _ => opportunistic_config(),
            };
            conn = conn.start_tls(&hop.host, config, remote)?;
            caps = ehlo(&mut conn, &client.helo, client.lmtp, t.command)?;
        }
    }
    if let Some(credentials) = &client.auth {
        authenticate(&mut conn, &caps, credentials, remote, t.command)?;
    }
    Ok(Session {
        conn,
        caps,
        opened: Instant::now(),
    })
}

/// AUTH PLAIN (RFC 4954), under TLS only. A refusal defers the mail (4.7.0): wrong
/// credentials are the administrator's to fix, and the mail waits meanwhile.
fn authenticate(
    conn: &mut Connection,
    caps: &Capabilities,
    credentials: &Credentials,
    remote: &str,
    timeout: Duration,
) -> Result<(), Failure> {
    let refuse = |text: String| {
        Failure::Tls(RemoteReply {
            code: 451,
            status: Some(EnhancedStatus(4, 7, 0)),
            text,
        })
    };
    if !matches!(conn, Connection::Tls(_)) {
        return Err(refuse(format!(
            "not sending credentials to {remote} without TLS"
        )));
    }
    if !caps.auth_plain {
        return Err(refuse(format!("{remote} does not offer AUTH PLAIN")));
    }
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("\0{}\0{}", credentials.user, credentials.password));
    conn.command(&format!("AUTH PLAIN {token}"))?;
    let reply = conn.reply(timeout)?;
    if reply.code != 235 {
        return Err(refuse(format!(
            "{remote} refused our login as {}: {} {}",
            credentials.user, reply.code, reply.text
        )));
    }
    Ok(())
}

/// How a transaction that went through left the session.
enum Ending {
    /// The message was sent (or refused after the data): ready for the next MAIL.
    Done,
    /// MAIL was accepted but no recipient was: RSET before the next MAIL.
    NeedsReset,
}

/// One transaction on an open session.
fn transaction(
    client: &Client,
    session: &mut Session,
    remote: &str,
    message: &Message<'_>,
    recipients: &[(usize, &Recipient)],
    outcomes: &mut [(usize, Option<AttemptOutcome>)],
    reached_mail: &mut bool,
) -> Result<Ending, Failure> {
    let t = client.timeouts;
    let (conn, caps) = (&mut session.conn, &session.caps);
    check_fit(message, caps, remote)?;

    let mut mail = format!("MAIL FROM:{}", message.sender);
    let envelope = message.envelope;
    if caps.size.is_some() {
        mail.push_str(&format!(" SIZE={}", message.len()));
    }
    match envelope.body_type {
        BodyType::SevenBit => {}
        BodyType::EightBitMime if caps.eightbitmime => mail.push_str(" BODY=8BITMIME"),
        BodyType::EightBitMime => {}
        BodyType::BinaryMime => mail.push_str(" BODY=BINARYMIME"),
    }
    if envelope.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if caps.dsn {
        match envelope.dsn.ret {
            Some(Ret::Full) => mail.push_str(" RET=FULL"),
            Some(Ret::Headers) => mail.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = &envelope.dsn.envid {
            mail.push_str(&format!(" ENVID={}", xtext(envid)));
        }
    }
    let rcpts: Vec<String> = recipients
        .iter()
        .map(|(_, r)| rcpt_command(r, caps.dsn))
        .collect();
    // The guard below the writer, for the pipelined batch too: no line may carry a break.
    for line in std::iter::once(&mail).chain(&rcpts) {
        if let Err(e) = backstop_types::text::one_line("an SMTP command", line) {
            return Err(local(554, EnhancedStatus(5, 5, 2), e.to_string()));
        }
    }
    // BDAT when offered: no dot-stuffing, and the only way to send BINARYMIME.
    let chunking = caps.chunking;
    let pipelining = caps.pipelining || client.lmtp;

    let mut accepted = Vec::new();
    if pipelining {
        let mut batch = format!("{mail}\r\n");
        for rcpt in &rcpts {
            batch.push_str(rcpt);
            batch.push_str("\r\n");
        }
        if !chunking {
            batch.push_str("DATA\r\n");
        }
        conn.write_all(batch.as_bytes())?;
        // Every command gets its reply, even after a refused MAIL.
        let mail_reply = conn.reply(t.command)?;
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        for _ in &rcpts {
            rcpt_replies.push(conn.reply(t.command)?);
        }
        let data_reply = if chunking {
            None
        } else {
            Some(conn.reply(t.data_start)?)
        };
        if mail_reply.code / 100 != 2 {
            if data_reply.as_ref().is_some_and(|r| r.code / 100 == 3) {
                conn.write_all(b".\r\n")?;
                let _ = conn.reply(t.data_end)?;
            }
            return Err(Failure::Reply(mail_reply));
        }
        *reached_mail = true;
        for (n, reply) in rcpt_replies.into_iter().enumerate() {
            if reply.code / 100 == 2 {
                accepted.push(n);
            } else {
                outcomes[n].1 = Some(outcome(remote, reply));
            }
        }
        if let Some(data_reply) = data_reply {
            if data_reply.code / 100 != 3 {
                if accepted.is_empty() {
                    return Ok(Ending::NeedsReset);
                }
                return Err(Failure::Reply(data_reply));
            }
            if accepted.is_empty() {
                // A 354 with no recipient: end the empty message and let it go.
                conn.write_all(b".\r\n")?;
                let _ = conn.reply(t.data_end)?;
                return Ok(Ending::Done);
            }
        }
    } else {
        conn.command(&mail)?;
        expect(conn.reply(t.command)?, 2)?;
        *reached_mail = true;
        for (n, rcpt) in rcpts.iter().enumerate() {
            conn.command(rcpt)?;
            let reply = conn.reply(t.command)?;
            if reply.code / 100 == 2 {
                accepted.push(n);
            } else {
                outcomes[n].1 = Some(outcome(remote, reply));
            }
        }
    }
    if accepted.is_empty() {
        return Ok(Ending::NeedsReset);
    }
    if chunking {
        conn.write_all(format!("BDAT {} LAST\r\n", message.len()).as_bytes())?;
        conn.write_all_unflushed(message.prefix)?;
        conn.write_all(message.body)?;
    } else {
        if !pipelining {
            conn.command("DATA")?;
            expect(conn.reply(t.data_start)?, 3)?;
        }
        conn.write_all_unflushed(&dot_stuff(message.prefix, false))?;
        conn.write_all(&dot_stuff(message.body, true))?;
    }
    if client.lmtp {
        // One reply per accepted recipient, in RCPT order (RFC 2033 4.2).
        for n in accepted {
            outcomes[n].1 = Some(outcome(remote, conn.reply(t.data_end)?));
        }
    } else {
        let reply = conn.reply(t.data_end)?;
        for n in accepted {
            outcomes[n].1 = Some(outcome(remote, reply.clone()));
        }
    }
    Ok(Ending::Done)
}

/// What a pooled connection is good for: the same next hop, spoken to the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PoolKey {
    endpoint: Endpoint,
    host: String,
    lmtp: bool,
    /// Which TLS policy (a session opened under one is not reused under a stricter one).
    tls: u8,
    /// Who the session is logged in as.
    user: Option<String>,
}

impl PoolKey {
    fn new(client: &Client, hop: &NextHop) -> PoolKey {
        PoolKey {
            endpoint: hop.endpoint.clone(),
            host: hop.host.clone(),
            lmtp: client.lmtp,
            tls: match client.tls {
                TlsPolicy::Off => 0,
                TlsPolicy::Opportunistic => 1,
                TlsPolicy::Require(_) => 2,
            },
            user: client.auth.as_ref().map(|c| c.user.clone()),
        }
    }
}

/// Open sessions kept between transactions, so that several messages to one next hop share
/// a connection (Postfix's connection cache): a session waits at most [`Pool::IDLE`] for its
/// next message and is not used after [`Pool::AGE`].
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Vec<(PoolKey, Session, Instant)>>,
}

impl Pool {
    /// How long a session may wait for the next message (Postfix's
    /// smtp_connection_cache_time_limit).
    pub const IDLE: Duration = Duration::from_secs(2);
    /// How long a connection is used at most (Postfix's smtp_connection_reuse_time_limit).
    pub const AGE: Duration = Duration::from_secs(300);

    fn take(&self, key: &PoolKey) -> Option<Session> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let at = idle.iter().position(|(k, _, _)| k == key)?;
        let (_, session, _) = idle.swap_remove(at);
        Some(session)
    }

    fn put(&self, key: PoolKey, mut session: Session, ending: Ending, timeouts: Timeouts) {
        let usable = match ending {
            Ending::Done => true,
            Ending::NeedsReset => {
                session.conn.command("RSET").is_ok()
                    && session
                        .conn
                        .reply(timeouts.command)
                        .is_ok_and(|r| r.code / 100 == 2)
            }
        };
        if !usable || session.opened.elapsed() >= Pool::AGE {
            let _ = session.conn.command("QUIT");
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((key, session, Instant::now()));
    }

    /// Closes sessions that have waited longer than [`Pool::IDLE`], or all with `everything`.
    pub fn expire(&self, everything: bool) {
        let stale: Vec<Session> = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let (stale, fresh) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|(_, _, since)| everything || since.elapsed() >= Pool::IDLE);
            *idle = fresh;
            stale.into_iter().map(|(_, s, _)| s).collect()
        };
        for mut session in stale {
            let _ = session.conn.command("QUIT");
        }
    }

    /// How many sessions wait, for tests.
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Refuses to send what the server said it cannot take.
fn check_fit(message: &Message<'_>, caps: &Capabilities, remote: &str) -> Result<(), Failure> {
    let envelope = message.envelope;
    if envelope.smtputf8 && !caps.smtputf8 {
        return Err(local(
            550,
            EnhancedStatus(5, 6, 7),
            format!("{remote} does not support SMTPUTF8, which this message needs"),
        ));
    }
    match envelope.body_type {
        BodyType::EightBitMime if !caps.eightbitmime => {
            return Err(local(
                554,
                EnhancedStatus(5, 6, 3),
                format!("{remote} does not support 8BITMIME, which this message needs"),
            ));
        }
        BodyType::BinaryMime if !(caps.binarymime && caps.chunking) => {
            return Err(local(
                554,
                EnhancedStatus(5, 6, 3),
                format!("{remote} does not support BINARYMIME, which this message needs"),
            ));
        }
        _ => {}
    }
    if let Some(limit) = caps.size {
        if message.len() as u64 > limit {
            return Err(local(
                552,
                EnhancedStatus(5, 3, 4),
                format!(
                    "message size {} exceeds {remote}'s limit of {limit}",
                    message.len()
                ),
            ));
        }
    }
    Ok(())
}

/// `RCPT TO`, with the recipient's DSN parameters when the server takes them.
fn rcpt_command(recipient: &Recipient, dsn: bool) -> String {
    let mut rcpt = format!("RCPT TO:<{}>", recipient.address);
    if dsn {
        match recipient.notify {
            Notify::Default => {}
            Notify::Never => rcpt.push_str(" NOTIFY=NEVER"),
            Notify::On {
                success,
                failure,
                delay,
            } => {
                let kinds: Vec<&str> =
                    [(success, "SUCCESS"), (failure, "FAILURE"), (delay, "DELAY")]
                        .into_iter()
                        .filter_map(|(on, name)| on.then_some(name))
                        .collect();
                rcpt.push_str(&format!(" NOTIFY={}", kinds.join(",")));
            }
        }
        if let Some(orcpt) = &recipient.orcpt {
            // The type as checked at RCPT, the address encoded again (RFC 3461 4.2).
            rcpt.push_str(&format!(" ORCPT={}", orcpt.to_param()));
        }
    }
    rcpt
}

fn xtext(s: &str) -> String {
    backstop_types::orcpt::encode_xtext(s.as_bytes())
}

/// What EHLO told us the server can do.
#[derive(Debug, Default)]
struct Capabilities {
    starttls: bool,
    size: Option<u64>,
    eightbitmime: bool,
    binarymime: bool,
    smtputf8: bool,
    pipelining: bool,
    chunking: bool,
    dsn: bool,
    auth_plain: bool,
}

fn ehlo(
    conn: &mut Connection,
    name: &str,
    lmtp: bool,
    timeout: Duration,
) -> Result<Capabilities, Failure> {
    let verb = if lmtp { "LHLO" } else { "EHLO" };
    conn.command(&format!("{verb} {name}"))?;
    let reply = conn.reply(timeout)?;
    if lmtp {
        expect(reply.clone(), 2)?;
    }
    if reply.code / 100 != 2 {
        // An old server: plain HELO, no extensions.
        conn.command(&format!("HELO {name}"))?;
        expect(conn.reply(timeout)?, 2)?;
        return Ok(Capabilities::default());
    }
    let mut caps = Capabilities::default();
    for line in reply.text.lines().skip(1) {
        let mut words = line.split_whitespace();
        match words.next().map(str::to_ascii_uppercase).as_deref() {
            Some("STARTTLS") => caps.starttls = true,
            Some("SIZE") => {
                caps.size = words.next().and_then(|n| n.parse().ok()).filter(|n| *n > 0)
            }
            Some("8BITMIME") => caps.eightbitmime = true,
            Some("BINARYMIME") => caps.binarymime = true,
            Some("SMTPUTF8") => caps.smtputf8 = true,
            Some("PIPELINING") => caps.pipelining = true,
            Some("CHUNKING") => caps.chunking = true,
            Some("DSN") => caps.dsn = true,
            Some("AUTH") => caps.auth_plain = words.any(|w| w.eq_ignore_ascii_case("PLAIN")),
            _ => {}
        }
    }
    Ok(caps)
}

fn expect(reply: RemoteReply, class: u16) -> Result<(), Failure> {
    if reply.code / 100 == class {
        Ok(())
    } else {
        Err(Failure::Reply(reply))
    }
}

fn outcome(remote: &str, reply: RemoteReply) -> AttemptOutcome {
    let a = attempt(remote, reply);
    match a.reply.code / 100 {
        2 => AttemptOutcome::Delivered(a),
        5 => AttemptOutcome::Permanent(a),
        _ => AttemptOutcome::Transient(a),
    }
}

fn attempt(remote: &str, reply: RemoteReply) -> Attempt {
    Attempt {
        remote_host: Some(remote.to_owned()),
        reply,
    }
}

/// Text as DATA sends it: a dot doubled at the start of every line. With `last`, also a final
/// CRLF if missing and the end-of-data line. Header fields put in front of the message end in
/// CRLF, so a piece that is not the last leaves the next one at the start of a line.
fn dot_stuff(body: &[u8], last: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if last {
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
    out
}

/// A socket to a next hop.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A connection, plain or under TLS.
enum Connection {
    Plain(BufReader<Stream>),
    Tls(Box<BufReader<StreamOwned<ClientConnection, Stream>>>),
}

impl Connection {
    /// Writes one command line. A line holding CR, LF or NUL is refused, never sent: whatever
    /// it came from, it would end the command early and start another (command injection).
    fn command(&mut self, line: &str) -> io::Result<()> {
        backstop_types::text::one_line("an SMTP command", line)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.write_all(format!("{line}\r\n").as_bytes())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all_unflushed(bytes)?;
        match self {
            Connection::Plain(r) => r.get_mut().flush(),
            Connection::Tls(r) => r.get_mut().flush(),
        }
    }

    /// Writes without flushing: under TLS the bytes may wait for the next write.
    fn write_all_unflushed(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Connection::Plain(r) => r.get_mut().write_all(bytes),
            Connection::Tls(r) => r.get_mut().write_all(bytes),
        }
    }

    fn stream(&self) -> &Stream {
        match self {
            Connection::Plain(r) => r.get_ref(),
            Connection::Tls(r) => &r.get_ref().sock,
        }
    }

    /// Reads a complete (possibly multi-line) reply, waiting at most `timeout` for each read.
    fn reply(&mut self, timeout: Duration) -> io::Result<RemoteReply> {
        self.stream().set_read_timeout(Some(timeout))?;
        let reader: &mut dyn BufRead = match self {
            Connection::Plain(r) => r,
            Connection::Tls(r) => r.as_mut(),
        };
        read_reply(reader)
    }

    /// Upgrades to TLS after the server's 220 to STARTTLS.
    fn start_tls(
        self,
        host: &str,
        config: Arc<ClientConfig>,
        remote: &str,
    ) -> Result<Connection, Failure> {
        let tls_failure = |text: String| {
            Failure::Tls(RemoteReply {
                code: 451,
                status: Some(EnhancedStatus(4, 7, 5)),
                text,
            })
        };
        let Connection::Plain(reader) = self else {
            return Err(Failure::Io(io::Error::other("TLS already active")));
        };
        if !reader.buffer().is_empty() {
            // CVE-2011-0411: nothing may come before the handshake.
            return Err(tls_failure(format!(
                "{remote} sent data behind its STARTTLS reply"
            )));
        }
        let stream = reader.into_inner();
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| tls_failure(format!("{host:?} is not a name TLS can verify")))?;
        let tls = ClientConnection::new(config, name)
            .map_err(|e| tls_failure(format!("TLS with {remote}: {e}")))?;
        let mut stream = StreamOwned::new(tls, stream);
        // Drive the handshake now, so that a failure is reported as such.
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .map_err(|e| tls_failure(format!("TLS handshake with {remote} failed: {e}")))?;
        }
        Ok(Connection::Tls(Box::new(BufReader::new(stream))))
    }
}

/// A TLS client configuration that verifies certificates against the PEM trust anchors in
/// `ca_file` (the system's bundle, usually).
pub fn verifying_config(ca_file: &std::path::Path) -> Result<Arc<ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{}: {e}", ca_file.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca_file.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificates in it", ca_file.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_reply(reader: &mut dyn BufRead) -> io::Result<RemoteReply> {
    let mut lines = Vec::new();
    let code: u16 = loop {
        let mut line = String::new();
        let mut limited = (&mut *reader).take(4096);
        if limited.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let bad = || io::Error::other(format!("bad reply line {line:?}"));
        let code = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(bad)?;
        lines.push(line.get(4..).unwrap_or("").to_owned());
        if line.as_bytes().get(3) != Some(&b'-') {
            break code;
        }
        if lines.len() > 100 {
            return Err(io::Error::other("reply too long"));
        }
    };
    // The enhanced status code, when the first line carries one.
    let (status, first) = match lines[0].split_once(' ') {
        Some((s, text)) => match parse_status(s) {
            Some(status) => (Some(status), text.to_owned()),
            None => (None, lines[0].clone()),
        },
        None => (parse_status(&lines[0]), lines[0].clone()),
    };
    lines[0] = first;
    Ok(RemoteReply {
        code,
        status,
        text: lines.join("\n"),
    })
}

fn parse_status(s: &str) -> Option<EnhancedStatus> {
    let mut parts = s.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && matches!(class, 2 | 4 | 5))
        .then_some(EnhancedStatus(class, subject, detail))
}

/// Opportunistic TLS: encrypt, but accept any certificate (Postfix's `may`).
fn opportunistic_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyCertificate(Arc::clone(&provider)));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_no_client_auth()
        });
    // The ring provider supports the default versions; a failure here is a build problem.
    Arc::new(config.unwrap_or_else(|e| panic!("TLS client configuration: {e}")))
}

/// Accepts any certificate chain, but still checks the handshake signatures with it.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests;
