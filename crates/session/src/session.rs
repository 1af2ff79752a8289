//! [`ServerSession`]: one SMTP connection, from greeting to close.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use backstop_types::text::has_control;
use backstop_types::{
    Address, AuthInfo, Body, BodyType, ClientInfo, Domain, DsnParams, Envelope, Notify, Orcpt,
    Recipient, Reply, Ret, ReversePath, Spooled, TlsInfo, TrustClass, UnixTime,
};
use smtp_proto::{MailFrom, RcptTo, Request};

use crate::budget::Reservation;
use crate::data::{DataFramer, Progress, Verdict};
use crate::params::{self, Number};
use crate::sasl::{self, Mechanism, SaslError};
use crate::{
    AuthOutcome, AuthPolicy, ContentVerdict, Credentials, EnqueueFailure, Message, Output, Peer,
    RecipientQuery, RecipientVerdict, SenderQuery, SenderRights, SenderVerdict, SessionConfig,
};

/// The server side of one SMTP connection. See the crate docs for the call order.
pub struct ServerSession {
    config: Arc<SessionConfig>,
    peer: Peer,
    phase: Phase,
    helo: Option<Helo>,
    tls: Option<TlsInfo>,
    auth: Option<AuthInfo>,
    /// What the authenticated user may use as envelope sender (set with `auth`).
    sender_rights: SenderRights,
    /// MAIL commands taken so far: each transaction's number.
    transactions: u64,
    /// The mail transaction: present from an accepted MAIL until the message is done or reset,
    /// so a recipient can only ever be added to a transaction that has a sender.
    txn: Option<Transaction>,
    /// Received, not yet processed.
    input: Vec<u8>,
    /// The rest of an over-long command line is being skipped up to its LF.
    skipping_line: bool,
    outputs: VecDeque<Output>,
    errors: u32,
    now: UnixTime,
    /// A RCPT waiting for [`ServerSession::handle_recipient`].
    pending_rcpt: Option<PendingRcpt>,
    /// A MAIL waiting for [`ServerSession::handle_sender`]: the transaction it would open.
    pending_mail: Option<Transaction>,
    /// See [`ServerSession::stage`].
    stage: &'static str,
    /// When the request under way (a command line, a DATA, a BDAT chunk) began, for its
    /// deadline; `None` between requests.
    request_started: Option<UnixTime>,
    /// This session's share of the memory for messages in progress: covers the message's
    /// buffer from DATA (or the first BDAT) until the message is stored or refused.
    memory: Reservation,
    /// The sender of the latest MAIL and the recipient of the latest RCPT the client sent
    /// (read well enough to parse), for log lines.
    asked_from: Option<ReversePath>,
    asked_to: Option<Address>,
    /// The first recipient of the message under way and how many it has, from DATA (or the
    /// first BDAT) on, for the log line of a refusal at its end.
    data_to: Option<(Address, usize)>,
}

/// Covered at the start of the data, before any of it arrives: the first growth steps of the
/// buffer, so that most messages never come back to the budget.
const FIRST_SHARE: u64 = 64 * 1024;

/// Before `incoming` more octets go through `framer` into `body`: makes room for them within
/// the memory budget, or, when the budget is used up, drops the message's content (the framer
/// keeps nothing more, the buffer and the share are given up; the data ends in 452 4.3.1).
fn keep_within_budget(
    memory: &mut Reservation,
    (head, body): (u64, &mut Vec<u8>),
    framer: &mut DataFramer,
    max_size: u64,
    incoming: usize,
) {
    if !framer.is_dropping() && !room_for(memory, head, body, framer, max_size, incoming) {
        framer.drop_content();
        *body = Vec::new();
        memory.cover(0);
    }
}

/// Makes room in `body` for `incoming` more octets from `framer`, within the memory budget
/// (beside `head` octets held for a spooled message); false when the budget is used up.
fn room_for(
    memory: &mut Reservation,
    head: u64,
    body: &mut Vec<u8>,
    framer: &DataFramer,
    max_size: u64,
    incoming: usize,
) -> bool {
    // The framer never keeps more than the maximum size of content.
    let header = body.len() as u64 - framer.kept().min(body.len() as u64);
    let ceiling = header.saturating_add(max_size);
    // One more than the input: a CR held over from the previous read comes out with it.
    let needed = (body.len() as u64)
        .saturating_add(incoming as u64)
        .saturating_add(1)
        .min(ceiling.saturating_add(1));
    if needed <= body.capacity() as u64 {
        return true;
    }
    // Grow as a Vec would (doubling), but never past what the message can use.
    let target = needed
        .max((body.capacity() as u64).saturating_mul(2))
        .min(ceiling.max(needed));
    let (target_total, needed_total) = (target.saturating_add(head), needed.saturating_add(head));
    if target_total > memory.held() && !memory.cover(target_total) {
        if needed_total > memory.held() && !memory.cover(needed_total) {
            return false;
        }
        body.reserve_exact(usize::try_from(needed).unwrap_or(usize::MAX) - body.len());
        return true;
    }
    body.reserve_exact(usize::try_from(target).unwrap_or(usize::MAX) - body.len());
    true
}

impl Transaction {
    /// The octets held beside the buffer (a spooled message's head), and the buffer.
    fn buffer(&mut self) -> (u64, &mut Vec<u8>) {
        (
            self.spool.as_ref().map_or(0, |s| s.head.len() as u64),
            &mut self.body,
        )
    }
}

/// A message being spooled: its header section stays here, the rest goes to `path`.
struct TxnSpool {
    path: std::path::PathBuf,
    head: Vec<u8>,
    /// Octets handed to the driver for the file so far.
    written: u64,
}

/// The most content a spooled message holds in memory before it is handed to the spool.
const SPOOL_CHUNK: usize = 64 * 1024;

struct PendingRcpt {
    address: Address,
    notify: Notify,
    orcpt: Option<Orcpt>,
}

enum Phase {
    /// The greeting has not been sent yet: any input is an early talker.
    BeforeGreeting,
    Command,
    /// Reading the client's next AUTH response line.
    Sasl(SaslStep),
    Data(DataFramer),
    /// Reading the octets of a BDAT chunk. Without a usable transaction they are discarded.
    Bdat {
        chunk_size: usize,
        remaining: usize,
        last: bool,
        /// The refusal to send once the chunk has been read and thrown away.
        discard: Option<Reply>,
    },
    /// An output is waiting for the driver's answer; input is held until then.
    Waiting,
    Closed,
}

enum SaslStep {
    PlainResponse,
    LoginUsername,
    LoginPassword { username: String },
}

struct Helo {
    name: String,
    /// EHLO rather than HELO: the extensions, PIPELINING among them, are in force.
    esmtp: bool,
}

struct Transaction {
    sender: ReversePath,
    /// SIZE as the client gave it at MAIL.
    size: Option<u64>,
    dsn: DsnParams,
    body_type: BodyType,
    smtputf8: bool,
    recipients: Vec<Recipient>,
    /// RCPT commands accepted: the recipient limit counts these, not alias expansions.
    accepted_rcpts: usize,
    /// The message as it will be queued: our `Received:` header, then the client's data. Once
    /// the message is spooled, only the data not yet handed to the spool.
    body: Vec<u8>,
    /// Set once the message outgrew the spool threshold.
    spool: Option<TxnSpool>,
    /// The header section did not end within the spool threshold: the content is dropped and
    /// the message refused at its end (as Exim's `header_maxsize`).
    header_too_large: bool,
    /// Set once the first BDAT chunk arrives; carries line-ending state across chunks.
    bdat: Option<DataFramer>,
    /// The session's MAIL count when this began.
    number: u64,
    /// Proxied recipients (`Some(true)`), queued ones (`Some(false)`), or none yet.
    proxied: Option<bool>,
    /// Between BDAT chunks: since when the session waits for the next one, and how long it
    /// waited between earlier ones. The whole wait of a transaction is bounded by the command
    /// timeout, so a client cannot hold a half-sent message (and its memory) for ever with
    /// NOOPs.
    bdat_waiting_since: Option<UnixTime>,
    bdat_waited: Duration,
}

/// What reading one command line produced.
enum Line {
    Complete(Vec<u8>),
    TooLong,
    BareNewline,
}

impl ServerSession {
    pub fn new(config: Arc<SessionConfig>, peer: Peer, now: UnixTime) -> ServerSession {
        let tls = peer.tls.clone();
        let config_memory = Arc::clone(&config.memory);
        ServerSession {
            config,
            peer,
            phase: Phase::BeforeGreeting,
            helo: None,
            tls,
            auth: None,
            sender_rights: SenderRights::Any,
            transactions: 0,
            txn: None,
            input: Vec::new(),
            skipping_line: false,
            outputs: VecDeque::new(),
            errors: 0,
            now,
            pending_rcpt: None,
            pending_mail: None,
            stage: "connect",
            request_started: None,
            memory: Reservation::new(&config_memory),
            asked_from: None,
            asked_to: None,
            data_to: None,
        }
    }

    /// The stage of the session the latest reply answers: `connect`, `helo`, `starttls`,
    /// `auth`, `mail`, `rcpt`, `data`, or `command` (anything else), for logs and metrics.
    pub fn stage(&self) -> &'static str {
        self.stage
    }

    /// Sends the greeting. Call once, after the greeting delay (if any) has passed.
    pub fn greet(&mut self) {
        if matches!(self.phase, Phase::BeforeGreeting) {
            self.reply(Reply::greeting(&self.config.hostname));
            self.phase = Phase::Command;
        }
    }

    /// Input from the client.
    pub fn handle_bytes(&mut self, bytes: &[u8], now: UnixTime) {
        self.now = now;
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        if self.input.is_empty() && self.request_started.is_none() {
            self.request_started = Some(now);
        }
        self.input.extend_from_slice(bytes);
        self.process();
    }

    /// A request ended: the next one began now if the client already sent some of it.
    fn request_done(&mut self) {
        self.request_started = (!self.input.is_empty()).then_some(self.now);
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// How long to wait for the client's next input before calling
    /// [`ServerSession::handle_timeout`] (RFC 5321 4.5.3.2).
    ///
    /// Beyond the wait for each read, a whole request has a deadline: a command line must
    /// arrive within `command_timeout`, a DATA or BDAT chunk within `data_timeout` plus its
    /// size at `min_data_rate`. The timeout returned is never past that deadline, so a client
    /// that trickles a byte at a time is timed out as one that sends nothing.
    pub fn read_timeout(&self) -> Duration {
        let (per_read, budget) = match &self.phase {
            Phase::Data(framer) => (
                self.config.data_timeout,
                self.config.data_timeout + self.transfer_allowance(framer.size()),
            ),
            Phase::Bdat { chunk_size, .. } => (
                self.config.data_timeout,
                self.config.data_timeout + self.transfer_allowance(*chunk_size as u64),
            ),
            _ => (self.config.command_timeout, self.config.command_timeout),
        };
        // Between BDAT chunks: what is left of the transaction's allowance for waiting.
        let wait_left = self.txn.as_ref().and_then(|t| {
            let since = t.bdat_waiting_since?;
            let waited = t.bdat_waited + Duration::from_secs(self.now.0.saturating_sub(since.0));
            Some(self.config.command_timeout.saturating_sub(waited))
        });
        let timeout = match self.request_started {
            None => per_read,
            Some(started) => {
                let spent = Duration::from_secs(self.now.0.saturating_sub(started.0));
                per_read.min(budget.saturating_sub(spent))
            }
        };
        wait_left.map_or(timeout, |left| timeout.min(left))
    }

    /// The time `octets` may take at the minimum data rate.
    fn transfer_allowance(&self, octets: u64) -> Duration {
        match self.config.min_data_rate {
            0 => Duration::MAX / 4,
            rate => Duration::from_secs(octets / rate),
        }
    }

    pub fn handle_timeout(&mut self) {
        self.close_with(Reply::timeout());
    }

    /// The server is shutting down: tell the client and close.
    pub fn shutdown(&mut self) {
        self.close_with(Reply::shutting_down());
    }

    /// The transaction is over (done, refused, reset): its share of the memory for message
    /// data goes back with it (a message already handed on is not in a transaction).
    /// Hands message content to the spool once the message outgrows the threshold: the
    /// header section stays in memory, the rest goes to the driver in chunks
    /// ([`Output::Spool`]). A header section that does not end within the threshold drops
    /// the content; the message is refused at its end.
    fn spill(&mut self) {
        let Some(config) = &self.config.spool else {
            return;
        };
        let Some(txn) = self.txn.as_mut() else { return };
        let framer = match &mut self.phase {
            Phase::Data(framer) => Some(framer),
            _ => txn.bdat.as_mut(),
        };
        let Some(framer) = framer else { return };
        if framer.is_dropping() {
            return;
        }
        match &mut txn.spool {
            None => {
                // The client's octets count, not the fields we put in front.
                if framer.kept() <= config.threshold {
                    return;
                }
                let Some(at) = txn.body.windows(4).position(|w| w == b"\r\n\r\n") else {
                    txn.header_too_large = true;
                    framer.drop_content();
                    txn.body = Vec::new();
                    self.memory.cover(0);
                    return;
                };
                let rest = txn.body[at + 4..].to_vec();
                txn.body.truncate(at + 4);
                let mut head = std::mem::replace(&mut txn.body, Vec::with_capacity(SPOOL_CHUNK));
                head.shrink_to_fit();
                // Unique among this process's sessions; what a crash leaves is removed at the
                // next start.
                let path = config.dir.join(format!("{}-{}", self.peer.id, txn.number));
                self.memory
                    .cover(head.len() as u64 + 2 * SPOOL_CHUNK as u64);
                txn.spool = Some(TxnSpool {
                    path: path.clone(),
                    head,
                    written: rest.len() as u64,
                });
                self.outputs.push_back(Output::Spool {
                    path,
                    bytes: rest,
                    create: true,
                });
            }
            Some(spool) => {
                if txn.body.len() < SPOOL_CHUNK {
                    return;
                }
                let bytes = std::mem::replace(&mut txn.body, Vec::with_capacity(SPOOL_CHUNK));
                spool.written += bytes.len() as u64;
                self.outputs.push_back(Output::Spool {
                    path: spool.path.clone(),
                    bytes,
                    create: false,
                });
            }
        }
    }

    fn end_transaction(&mut self) {
        self.txn = None;
        self.memory.cover(0);
    }

    /// The name the client gave in HELO or EHLO, for log lines.
    pub fn helo_name(&self) -> Option<&str> {
        self.helo.as_ref().map(|h| h.name.as_str())
    }

    /// The sender of the latest MAIL command, for log lines.
    pub fn asked_from(&self) -> Option<&ReversePath> {
        self.asked_from.as_ref()
    }

    /// The recipient of the latest RCPT command, for log lines.
    pub fn asked_to(&self) -> Option<&Address> {
        self.asked_to.as_ref()
    }

    /// The message's first recipient and how many it has, from DATA on (until the next MAIL),
    /// for the log line of a refusal of the message.
    pub fn data_recipients(&self) -> Option<(&Address, usize)> {
        self.data_to.as_ref().map(|(first, n)| (first, *n))
    }

    /// A transaction is under way (after MAIL, until its end): what a shutdown lets finish.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
            || self.pending_mail.is_some()
            || matches!(
                self.phase,
                Phase::Data(_) | Phase::Bdat { .. } | Phase::Waiting
            )
    }

    /// The number of the transaction under way (counting MAIL commands), if one is.
    pub fn transaction_number(&self) -> Option<u64> {
        self.in_transaction().then_some(self.transactions)
    }

    /// Whether the session is under TLS now.
    pub fn tls_active(&self) -> bool {
        self.tls.is_some()
    }

    /// The client's address, as the listener gave it.
    pub fn client_ip(&self) -> std::net::IpAddr {
        self.peer.ip
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over (RFC 3207 4.2).
    pub fn tls_established(&mut self, tls: TlsInfo) {
        if self.is_closed() {
            return;
        }
        self.tls = Some(tls);
        self.helo = None;
        self.end_transaction();
        self.auth = None;
        self.phase = Phase::Command;
        self.process();
    }

    /// The answer to [`Output::Authenticate`].
    pub fn handle_auth(&mut self, credentials: Credentials, outcome: AuthOutcome) {
        if self.is_closed() {
            return;
        }
        self.phase = Phase::Command;
        match outcome {
            AuthOutcome::Success(rights) => {
                self.sender_rights = rights;
                self.auth = Some(AuthInfo {
                    user: credentials.username,
                    mechanism: credentials.mechanism.name().to_owned(),
                });
                self.reply(Reply::auth_succeeded());
            }
            AuthOutcome::Failure => self.error(Reply::auth_failed()),
            AuthOutcome::TemporaryFailure => self.reply(Reply::auth_temporary_failure()),
            AuthOutcome::Throttled => self.error(Reply::auth_throttled()),
        }
        self.process();
    }

    /// Logs the session in without AUTH, as a local user the operating system vouches for:
    /// the driver of the local submission socket calls it before the greeting, with the Unix
    /// user the kernel names as the peer (`backstop sendmail`) and the senders it may use
    /// (as a logged-in user's); AUTH is then refused as for any session already logged in.
    pub fn log_in_locally(&mut self, user: String, rights: SenderRights) {
        self.sender_rights = rights;
        self.auth = Some(AuthInfo {
            user,
            mechanism: "local".to_owned(),
        });
    }

    /// The answer to [`Output::CheckSender`].
    pub fn handle_sender(&mut self, verdict: SenderVerdict) {
        if self.is_closed() {
            return;
        }
        self.phase = Phase::Command;
        let Some(txn) = self.pending_mail.take() else {
            return;
        };
        match verdict {
            SenderVerdict::Accept => {
                self.txn = Some(txn);
                self.reply(Reply::sender_ok());
            }
            SenderVerdict::RateLimited => self.reply(Reply::rate_limited()),
            SenderVerdict::Unavailable => self.reply(Reply::check_unavailable()),
            SenderVerdict::Blocklisted { zone } => {
                let reply = Reply::blocklisted(self.peer.ip, &zone);
                self.error(reply)
            }
            SenderVerdict::Refused(reply) => self.error(reply),
        }
        self.process();
    }

    /// The answer to [`Output::CheckRecipient`].
    pub fn handle_recipient(&mut self, verdict: RecipientVerdict) {
        if self.is_closed() {
            return;
        }
        self.phase = Phase::Command;
        let Some(pending) = self.pending_rcpt.take() else {
            return;
        };
        match verdict {
            RecipientVerdict::Proxied(reply) => {
                if reply.is_positive() {
                    if let Some(txn) = &mut self.txn {
                        txn.proxied = Some(true);
                    }
                    self.add_recipient(pending.address, pending.notify, pending.orcpt);
                    self.count_rcpt();
                    self.reply(reply);
                } else if reply.is_transient() {
                    self.reply(reply);
                } else {
                    self.error(reply);
                }
            }
            RecipientVerdict::SeparateTransaction => self.reply(Reply::separate_transaction()),
            RecipientVerdict::NextHopRefused(reply) if reply.is_transient() => self.reply(reply),
            RecipientVerdict::NextHopRefused(reply) => self.error(reply),
            RecipientVerdict::Accept(targets) => {
                if let Some(txn) = &mut self.txn {
                    txn.proxied = Some(false);
                }
                for target in targets {
                    // An alias keeps the address the client gave as ORCPT (RFC 3461 4.2).
                    let orcpt = match &pending.orcpt {
                        Some(orcpt) => Some(orcpt.clone()),
                        None if target != pending.address => Some(Orcpt::rfc822(&pending.address)),
                        None => None,
                    };
                    self.add_recipient(target, pending.notify, orcpt);
                }
                self.count_rcpt();
                self.reply(Reply::recipient_ok());
            }
            RecipientVerdict::Unknown => self.error(Reply::unknown_recipient()),
            RecipientVerdict::Unavailable => self.reply(Reply::recipient_lookup_failed()),
            RecipientVerdict::Defer { retry_after } => self.reply(Reply::greylisted(retry_after)),
            RecipientVerdict::RateLimited => self.reply(Reply::rate_limited()),
            RecipientVerdict::NotOurBounce(problem) => self.error(problem.reply()),
        }
        self.process();
    }

    /// The answer to [`Output::CheckMessage`]: store the message, quarantine it, or refuse it.
    pub fn handle_message(&mut self, message: Box<Message>, verdict: ContentVerdict) {
        if self.is_closed() {
            return;
        }
        // Held until the message is stored; given back at once when it will not be.
        if !matches!(
            verdict,
            ContentVerdict::Accept
                | ContentVerdict::AcceptChanged(_)
                | ContentVerdict::Quarantine(_)
        ) {
            self.memory.cover(0);
        }
        match verdict {
            ContentVerdict::Accept => self.outputs.push_back(Output::Enqueue(message)),
            ContentVerdict::AcceptChanged(changed) => {
                self.outputs.push_back(Output::Enqueue(changed));
            }
            ContentVerdict::Relayed(reply) => {
                self.phase = Phase::Command;
                self.end_transaction();
                if reply.is_positive() || reply.is_transient() {
                    self.reply(reply);
                } else {
                    self.error(reply);
                }
                self.process();
            }
            ContentVerdict::Discard(_) => {
                self.phase = Phase::Command;
                self.end_transaction();
                self.reply(Reply::discarded());
                self.process();
            }
            ContentVerdict::Quarantine(reason) => {
                self.outputs
                    .push_back(Output::Quarantine { message, reason });
            }
            ContentVerdict::Refuse(reply) => {
                self.phase = Phase::Command;
                if reply.is_transient() {
                    self.reply(reply);
                } else {
                    self.error(reply);
                }
                self.process();
            }
        }
    }

    /// The answer to [`Output::Enqueue`] and [`Output::Quarantine`]: the queue id once the
    /// message is durably stored.
    pub fn handle_enqueued(&mut self, result: Result<backstop_types::QueueId, EnqueueFailure>) {
        if self.is_closed() {
            return;
        }
        self.phase = Phase::Command;
        self.end_transaction();
        self.memory.cover(0);
        match result {
            Ok(id) => self.reply(Reply::queued(id)),
            Err(EnqueueFailure::StorageFull) => self.reply(Reply::insufficient_storage()),
            Err(EnqueueFailure::Unavailable) => self.reply(Reply::queue_unavailable()),
        }
        self.process();
    }

    // --- Input processing -------------------------------------------------------------------

    fn process(&mut self) {
        loop {
            match &mut self.phase {
                Phase::Closed | Phase::Waiting => return,
                Phase::BeforeGreeting => {
                    if !self.input.is_empty() {
                        self.close_with(Reply::early_talker());
                    }
                    return;
                }
                Phase::Command | Phase::Sasl(_) => {
                    let Some(line) = self.take_line() else { return };
                    match line {
                        Line::TooLong => {
                            self.error(Reply::line_too_long(self.config.max_line_length))
                        }
                        Line::BareNewline => self.error(Reply::bare_newline_in_command()),
                        Line::Complete(line) => {
                            if matches!(self.phase, Phase::Sasl(_)) {
                                self.sasl_line(&line);
                            } else {
                                self.command(&line);
                            }
                        }
                    }
                }
                Phase::Data(framer) => {
                    // The transaction exists for as long as the phase is Data.
                    let Some(txn) = self.txn.as_mut() else { return };
                    keep_within_budget(
                        &mut self.memory,
                        txn.buffer(),
                        framer,
                        self.config.max_message_size,
                        self.input.len(),
                    );
                    match framer.feed(&self.input, &mut txn.body) {
                        Progress::NeedMore => {
                            self.input.clear();
                            self.spill();
                            return;
                        }
                        Progress::End { consumed } => {
                            self.input.drain(..consumed);
                            let Phase::Data(framer) =
                                std::mem::replace(&mut self.phase, Phase::Command)
                            else {
                                unreachable!("matched above")
                            };
                            let verdict = framer.finish(&mut txn.body);
                            self.request_done();
                            self.end_of_data(verdict);
                            self.check_pipelining(false);
                        }
                    }
                }
                Phase::Bdat {
                    remaining, discard, ..
                } => {
                    let take = self.input.len().min(*remaining);
                    if take == 0 && *remaining > 0 {
                        return;
                    }
                    *remaining -= take;
                    let more = *remaining > 0;
                    if discard.is_none() {
                        if let Some(txn) = self.txn.as_mut() {
                            let head = txn.spool.as_ref().map_or(0, |s| s.head.len() as u64);
                            if let Some(framer) = txn.bdat.as_mut() {
                                keep_within_budget(
                                    &mut self.memory,
                                    (head, &mut txn.body),
                                    framer,
                                    self.config.max_message_size,
                                    take,
                                );
                                framer.feed(&self.input[..take], &mut txn.body);
                            }
                        }
                    }
                    self.input.drain(..take);
                    self.spill();
                    if more {
                        return;
                    }
                    self.request_started = (!self.input.is_empty()).then_some(self.now);
                    let Phase::Bdat {
                        chunk_size,
                        last,
                        discard,
                        ..
                    } = std::mem::replace(&mut self.phase, Phase::Command)
                    else {
                        unreachable!("matched above")
                    };
                    match discard {
                        Some(reply) => self.error(reply),
                        None => self.end_of_chunk(chunk_size, last),
                    }
                    self.check_pipelining(false);
                }
            }
        }
    }

    /// Takes the next complete command line off the input, if there is one.
    fn take_line(&mut self) -> Option<Line> {
        let max = self.config.max_line_length;
        let Some(lf) = self.input.iter().position(|&b| b == b'\n') else {
            if self.skipping_line {
                // More of a line already refused: dropped without another reply.
                self.input.clear();
                return None;
            }
            if self.input.len() > max {
                self.input.clear();
                self.skipping_line = true;
                return Some(Line::TooLong);
            }
            return None;
        };
        let line: Vec<u8> = self.input.drain(..=lf).collect();
        self.request_done();
        if std::mem::take(&mut self.skipping_line) {
            // The tail of a line already refused as too long.
            return self.take_line();
        }
        if line.len() > max {
            return Some(Line::TooLong);
        }
        let body = &line[..line.len() - 1];
        match body.split_last() {
            Some((b'\r', text)) if !text.contains(&b'\r') => Some(Line::Complete(line)),
            _ => Some(Line::BareNewline),
        }
    }

    /// Input left over after a command the client had to wait on is a protocol violation
    /// (RFC 2920 3.1, RFC 5321 4.3); without PIPELINING every command is such a command.
    ///
    /// Not judged while an output waits for the driver (after the end of data): the message was
    /// received correctly and is being stored; what follows is read after the reply.
    fn check_pipelining(&mut self, must_be_last: bool) {
        if matches!(
            self.phase,
            Phase::Closed | Phase::Bdat { .. } | Phase::Waiting
        ) || self.input.is_empty()
        {
            return;
        }
        let pipelining = self.helo.as_ref().is_some_and(|h| h.esmtp);
        if must_be_last || !pipelining {
            self.input.clear();
            self.close_with(Reply::pipelining_violation());
        }
    }

    fn command(&mut self, line: &[u8]) {
        // Every command is text: addresses, names and parameters are UTF-8 or nothing (RFC
        // 6531 3.3), and what is not cannot be stored or passed on faithfully.
        let Ok(text) = std::str::from_utf8(line) else {
            self.stage = "command";
            self.error(Reply::not_utf8());
            self.check_pipelining(false);
            return;
        };
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request.into_owned(),
            Err(e) => {
                self.stage = "command";
                self.error(parse_error_reply(e));
                self.check_pipelining(false);
                return;
            }
        };
        self.stage = match &request {
            Request::Ehlo { .. } | Request::Helo { .. } | Request::Lhlo { .. } => "helo",
            Request::StartTls => "starttls",
            Request::Auth { .. } => "auth",
            Request::Mail { .. } => "mail",
            Request::Rcpt { .. } => "rcpt",
            Request::Data | Request::Bdat { .. } => "data",
            _ => "command",
        };
        let must_be_last = matches!(
            request,
            Request::Ehlo { .. }
                | Request::Helo { .. }
                | Request::Data
                | Request::StartTls
                | Request::Auth { .. }
                | Request::Quit
        );
        match request {
            Request::Ehlo { host } => self.ehlo(host, true),
            Request::Helo { host } => self.ehlo(host, false),
            Request::Lhlo { .. } => self.error(Reply::unknown_command()),
            Request::Mail { from } => self.mail(from, text),
            Request::Rcpt { to } => self.rcpt(to, text),
            Request::Data => self.data(),
            // smtp-proto's chunk size wraps; the line says what it is.
            Request::Bdat { .. } => match params::bdat(text) {
                Some((size, last)) => self.bdat(size, last),
                // Without a size we can trust, the chunk cannot be told from what follows.
                None => return self.close_with(Reply::bad_chunk_size()),
            },
            Request::Rset => {
                self.end_transaction();
                self.reply(Reply::ok());
            }
            Request::Noop { .. } => self.reply(Reply::ok()),
            Request::Quit => self.close_with(Reply::bye()),
            Request::Vrfy { .. } => self.reply(Reply::cannot_verify()),
            Request::Help { .. } => self.reply(Reply::help()),
            Request::StartTls => {
                self.starttls();
                return;
            }
            Request::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response),
            Request::Expn { .. } => self.error(Reply::not_implemented("EXPN")),
            Request::Etrn { .. } => self.error(Reply::not_implemented("ETRN")),
            Request::Atrn { .. } => self.error(Reply::not_implemented("ATRN")),
            Request::Burl { .. } => self.error(Reply::not_implemented("BURL")),
        }
        self.check_pipelining(must_be_last);
    }

    fn ehlo(&mut self, host: String, esmtp: bool) {
        // The name is echoed, logged and written into `Received:`: a domain or an address
        // literal never holds a control character, a space or more than 255 octets.
        if host.is_empty() || host.len() > 255 || has_control(&host) || host.contains(' ') {
            return self.error(Reply::invalid_helo());
        }
        // A new EHLO resets any transaction in progress (RFC 5321 4.1.4).
        self.end_transaction();
        let reply = if esmtp {
            Reply::ehlo(&self.config.hostname, &host, self.capabilities())
        } else {
            Reply::helo(&self.config.hostname, &host)
        };
        self.helo = Some(Helo { name: host, esmtp });
        self.reply(reply);
    }

    fn capabilities(&self) -> Vec<String> {
        let mut caps = vec![
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
            "CHUNKING".to_owned(),
            "DSN".to_owned(),
        ];
        if self.config.starttls && self.tls.is_none() {
            caps.push("STARTTLS".to_owned());
        }
        if self.auth_offered() && self.auth.is_none() {
            caps.push("AUTH PLAIN LOGIN".to_owned());
        }
        caps.push("HELP".to_owned());
        caps
    }

    fn auth_offered(&self) -> bool {
        match self.config.auth {
            AuthPolicy::Disabled => false,
            AuthPolicy::RequireTls => self.tls.is_some(),
            AuthPolicy::AllowPlaintext => true,
        }
    }

    fn mail(&mut self, from: MailFrom<String>, line: &str) {
        if self.helo.is_none() {
            return self.error(Reply::bad_sequence("Send HELO or EHLO first"));
        }
        if self.txn.is_some() {
            return self.error(Reply::bad_sequence("Nested MAIL command"));
        }
        if self.config.require_auth && self.auth.is_none() && !self.peer.local_submitter {
            return self.error(Reply::auth_required());
        }
        if let Some(param) = unsupported_mail_param(&from) {
            return self.error(Reply::unsupported_parameter(param));
        }
        let sender = if from.address.is_empty() {
            if !bracketed(line.as_bytes()).is_some_and(str::is_empty) {
                // smtp-proto maps `<postmaster>` to "" too; it is no valid reverse path.
                return self.error(Reply::bad_sender_syntax());
            }
            ReversePath::Null
        } else {
            match Address::parse(&from.address) {
                Ok(a) => ReversePath::Address(a),
                Err(_) => return self.error(Reply::bad_sender_syntax()),
            }
        };
        self.asked_from = Some(sender.clone());
        self.data_to = None;
        if let Some(auth) = &self.auth {
            if !self.sender_rights.allows(&sender) {
                let reply = Reply::sender_not_owned(&auth.user);
                return self.error(reply);
            }
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !smtputf8 && sender.address().is_some_and(|a| !a.is_ascii()) {
            return self.error(Reply::smtputf8_required());
        }
        // SIZE as sent: smtp-proto's number wraps past 20 digits.
        match params::value(line, "SIZE").map(params::number) {
            None => {}
            Some(Number::Value(size)) if size <= self.config.max_message_size => {}
            Some(Number::Value(_) | Number::TooLarge) => {
                return self.error(Reply::message_too_big(self.config.max_message_size));
            }
            Some(Number::Invalid) => return self.error(Reply::invalid_parameter("SIZE")),
        }
        // ENVID decoded here: smtp-proto's decoding lets CR LF through.
        let envid = match params::envid(line) {
            Ok(envid) => envid,
            Err(params::BadEnvid) => return self.error(Reply::invalid_parameter("ENVID")),
        };
        let body_type = if from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0 {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        };
        let ret = if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
            Some(Ret::Full)
        } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
            Some(Ret::Headers)
        } else {
            None
        };
        let txn = Transaction {
            sender,
            size: match params::value(line, "SIZE").map(params::number) {
                Some(Number::Value(size)) => Some(size),
                _ => None,
            },
            dsn: DsnParams { ret, envid },
            body_type,
            smtputf8,
            recipients: Vec::new(),
            accepted_rcpts: 0,
            body: Vec::new(),
            spool: None,
            header_too_large: false,
            bdat: None,
            number: {
                self.transactions += 1;
                self.transactions
            },
            proxied: None,
            bdat_waiting_since: None,
            bdat_waited: Duration::ZERO,
        };
        if self.config.checks.senders {
            let query = SenderQuery {
                sender: txn.sender.clone(),
                client: self.peer.ip,
                helo: self
                    .helo
                    .as_ref()
                    .map(|h| h.name.clone())
                    .unwrap_or_default(),
                user: self.auth.as_ref().map(|a| a.user.clone()),
                trusted: self.auth.is_some() || self.peer.local_submitter,
            };
            self.pending_mail = Some(txn);
            self.phase = Phase::Waiting;
            self.outputs.push_back(Output::CheckSender(query));
            return;
        }
        self.txn = Some(txn);
        self.reply(Reply::sender_ok());
    }

    fn rcpt(&mut self, to: RcptTo<String>, line: &str) {
        if self.helo.is_none() {
            return self.error(Reply::bad_sequence("Send HELO or EHLO first"));
        }
        let Some(txn) = self.txn.as_ref() else {
            return self.error(Reply::bad_sequence("Need MAIL before RCPT"));
        };
        let unsupported = to.flags
            & (smtp_proto::RCPT_CONNEG
                | smtp_proto::RCPT_RRVS_REJECT
                | smtp_proto::RCPT_RRVS_CONTINUE);
        if unsupported != 0 || to.rrvs != 0 {
            return self.error(Reply::unsupported_parameter(if to.rrvs != 0 {
                "RRVS"
            } else {
                "CONNEG"
            }));
        }
        let address = if to.address.is_empty() {
            // `<postmaster>` without a domain must always be accepted (RFC 5321 4.5.1).
            if !bracketed(line.as_bytes()).is_some_and(|a| a.eq_ignore_ascii_case("postmaster")) {
                return self.error(Reply::bad_recipient_syntax());
            }
            match Domain::parse(&self.config.hostname).and_then(|d| Address::new("postmaster", d)) {
                Ok(a) => a,
                Err(_) => return self.error(Reply::bad_recipient_syntax()),
            }
        } else {
            match Address::parse(&to.address) {
                Ok(a) => a,
                Err(_) => return self.error(Reply::bad_recipient_syntax()),
            }
        };
        self.asked_to = Some(address.clone());
        if !txn.smtputf8 && !address.is_ascii() {
            return self.error(Reply::smtputf8_required());
        }
        let address = self.local_postmaster(address);
        // ORCPT from the raw line, checked: it goes to a next hop and into reports.
        let orcpt = match params::orcpt(line) {
            Ok(orcpt) => orcpt,
            Err(e) => return self.error(Reply::bad_orcpt(&e.to_string())),
        };
        if txn.accepted_rcpts >= self.config.max_recipients {
            return self.reply(Reply::too_many_recipients(self.config.max_recipients));
        }
        let trusted = self.auth.is_some() || self.peer.local_submitter;
        let scope = match recipient_scope(&self.config, &address, trusted) {
            Ok(scope) => scope,
            Err(refused) => return self.error(refused),
        };
        let notify = if to.flags & smtp_proto::RCPT_NOTIFY_NEVER != 0 {
            Notify::Never
        } else if to.flags
            & (smtp_proto::RCPT_NOTIFY_SUCCESS
                | smtp_proto::RCPT_NOTIFY_FAILURE
                | smtp_proto::RCPT_NOTIFY_DELAY)
            != 0
        {
            Notify::On {
                success: to.flags & smtp_proto::RCPT_NOTIFY_SUCCESS != 0,
                failure: to.flags & smtp_proto::RCPT_NOTIFY_FAILURE != 0,
                delay: to.flags & smtp_proto::RCPT_NOTIFY_DELAY != 0,
            }
        } else {
            Notify::Default
        };
        let local = scope == Scope::Local;
        if self.config.checks.recipients && matches!(scope, Scope::Local | Scope::RelayDomain) {
            let sender = match &self.txn {
                Some(txn) => txn.sender.clone(),
                None => return,
            };
            self.pending_rcpt = Some(PendingRcpt {
                address: address.clone(),
                notify,
                orcpt,
            });
            self.phase = Phase::Waiting;
            let (number, proxied, size) = match &self.txn {
                Some(txn) => (txn.number, txn.proxied, txn.size),
                None => return,
            };
            self.outputs
                .push_back(Output::CheckRecipient(RecipientQuery {
                    recipient: address,
                    sender,
                    client: self.peer.ip,
                    local,
                    trusted,
                    user: self.auth.as_ref().map(|a| a.user.clone()),
                    transaction: crate::TransactionRef {
                        session: self.peer.id,
                        number,
                    },
                    proxied,
                    size,
                }));
            return;
        }
        match self.txn.as_mut().map(|t| &mut t.proxied) {
            Some(Some(true)) => return self.reply(Reply::separate_transaction()),
            Some(proxied) => *proxied = Some(false),
            None => {}
        }
        self.add_recipient(address, notify, orcpt);
        self.count_rcpt();
        self.reply(Reply::recipient_ok());
    }

    /// `postmaster@<our host name>` (and so a bare `<postmaster>`) is the postmaster of the
    /// first local domain when there is one: mail for it stays here. Left as it is, a `*`
    /// route would send it out to whatever the route names, or back to us in a loop.
    fn local_postmaster(&self, address: Address) -> Address {
        let ours = address.local_part().eq_ignore_ascii_case("postmaster")
            && address
                .domain()
                .as_str()
                .eq_ignore_ascii_case(&self.config.hostname);
        match (ours, self.config.local_domains.first()) {
            (true, Some(domain)) => Address::new("postmaster", domain.clone()).unwrap_or(address),
            _ => address,
        }
    }

    fn count_rcpt(&mut self) {
        if let Some(txn) = self.txn.as_mut() {
            txn.accepted_rcpts += 1;
        }
    }

    fn add_recipient(&mut self, address: Address, notify: Notify, orcpt: Option<Orcpt>) {
        let Some(txn) = self.txn.as_mut() else { return };
        if !txn.recipients.iter().any(|r| r.address == address) {
            txn.recipients.push(Recipient {
                address,
                notify,
                orcpt,
            });
        }
    }

    /// Whether a DATA or BDAT may start now; the refusal otherwise.
    fn data_refusal(&self) -> Option<Reply> {
        if self.helo.is_none() {
            return Some(Reply::bad_sequence("Send HELO or EHLO first"));
        }
        match &self.txn {
            None => Some(Reply::bad_sequence("Need MAIL command")),
            Some(txn) if txn.recipients.is_empty() => Some(Reply::bad_sequence(
                "Need RCPT command (no valid recipients)",
            )),
            Some(_) => None,
        }
    }

    fn data(&mut self) {
        // Named from this message's start on (a DATA refused here has none).
        self.data_to = None;
        if let Some(refusal) = self.data_refusal() {
            return self.error(refusal);
        }
        if self.txn.as_ref().is_some_and(|t| t.bdat.is_some()) {
            return self.error(Reply::bad_sequence("DATA cannot follow BDAT"));
        }
        // No memory for the message now: the client keeps it and tries later, before it sends
        // a byte of it. The transaction stays, as after any reply to DATA that is not 354.
        if !self.memory.cover(FIRST_SHARE) {
            return self.reply(Reply::insufficient_memory());
        }
        self.start_body();
        self.phase = Phase::Data(DataFramer::data(self.config.max_message_size));
        self.request_started = Some(self.now);
        self.reply(Reply::start_data());
    }

    fn bdat(&mut self, chunk_size: u64, last: bool) {
        // No transaction: no message to name (not the last one's).
        if self.txn.is_none() {
            self.data_to = None;
        }
        // A chunk larger than any message we take: refusing it would mean reading all of it
        // first, however large the client says it is.
        let chunk_size = match usize::try_from(chunk_size) {
            Ok(size) if chunk_size <= self.config.max_message_size => size,
            _ => return self.close_with(Reply::message_too_big(self.config.max_message_size)),
        };
        self.request_started = Some(self.now);
        // The wait for this chunk is over; it counts toward the transaction's allowance.
        let now = self.now;
        if let Some(txn) = self.txn.as_mut() {
            if let Some(since) = txn.bdat_waiting_since.take() {
                txn.bdat_waited += Duration::from_secs(now.0.saturating_sub(since.0));
            }
        }
        let discard = match self.data_refusal() {
            Some(refusal) => Some(refusal),
            None if self.helo.as_ref().is_some_and(|h| !h.esmtp) => {
                Some(Reply::bad_sequence("BDAT needs EHLO"))
            }
            None => None,
        };
        if discard.is_none() && self.txn.as_ref().is_some_and(|t| t.bdat.is_none()) {
            self.start_body();
            let mut framer = DataFramer::bdat(self.config.max_message_size);
            // No memory for the message now: its chunks are read and dropped, and the first
            // one is answered 452 (see `end_of_chunk`).
            if !self.memory.cover(FIRST_SHARE) {
                framer.drop_content();
            }
            if let Some(txn) = self.txn.as_mut() {
                txn.bdat = Some(framer);
            }
        }
        self.phase = Phase::Bdat {
            chunk_size,
            remaining: chunk_size,
            last,
            discard,
        };
    }

    /// Puts our `Received:` header at the front of the body. Stamped when the data begins, as
    /// Postfix does, so the body never has to be copied to prepend it.
    fn start_body(&mut self) {
        let client = self.client_info();
        let esmtp = self.helo.as_ref().is_some_and(|h| h.esmtp);
        let Some(txn) = self.txn.as_mut() else { return };
        self.data_to = txn
            .recipients
            .first()
            .map(|r| (r.address.clone(), txn.recipients.len()));
        txn.body = crate::received::header(
            &self.config.hostname,
            &client,
            esmtp,
            txn.smtputf8,
            &txn.recipients,
            self.now,
        );
    }

    fn end_of_chunk(&mut self, chunk_size: usize, last: bool) {
        let Some(txn) = self.txn.as_mut() else { return };
        let Some(framer) = txn.bdat.as_ref() else {
            return;
        };
        // Bad line endings or too much data are refused at once, not only after the last
        // chunk, so the client stops sending chunks (RFC 3030 2).
        let refused = framer.is_tainted()
            || framer.size() > self.config.max_message_size
            || framer.is_dropping();
        if last || refused {
            let Some(framer) = txn.bdat.take() else {
                return;
            };
            let verdict = framer.finish(&mut txn.body);
            self.end_of_data(verdict);
        } else {
            txn.bdat_waiting_since = Some(self.now);
            self.reply(Reply::chunk_received(chunk_size));
        }
    }

    fn end_of_data(&mut self, verdict: Verdict) {
        match verdict {
            Verdict::Clean => {}
            Verdict::BadLineEndings => {
                self.end_transaction();
                self.memory.cover(0);
                return self.error(Reply::bad_line_endings());
            }
            Verdict::TooBig => {
                self.end_transaction();
                self.memory.cover(0);
                return self.error(Reply::message_too_big(self.config.max_message_size));
            }
            Verdict::NoMemory if self.txn.as_ref().is_some_and(|t| t.header_too_large) => {
                self.end_transaction();
                let limit = self.config.spool.as_ref().map_or(0, |s| s.threshold);
                return self.error(Reply::header_too_large(limit));
            }
            // Not the client's fault: no error counted.
            Verdict::NoMemory => {
                self.end_transaction();
                self.memory.cover(0);
                self.phase = Phase::Command;
                return self.reply(Reply::insufficient_memory());
            }
        }
        let Some(mut txn) = self.txn.take() else {
            return;
        };
        let mut body = match txn.spool.take() {
            None => Body::new(std::mem::take(&mut txn.body)),
            Some(spool) => {
                // The rest of the content goes to the spool before the message is handed on.
                let bytes = std::mem::take(&mut txn.body);
                let len = spool.written + bytes.len() as u64;
                self.outputs.push_back(Output::Spool {
                    path: spool.path.clone(),
                    bytes,
                    create: false,
                });
                Body::spooled(
                    spool.head,
                    Spooled {
                        path: spool.path,
                        len,
                    },
                )
            }
        };
        let head = body.head_mut();
        let header_end = crate::headers::section(head).len();
        // A mail loop: the message has passed this way, or through too many hands, already.
        if crate::headers::hops(&head[..header_end]) > self.config.max_hops {
            self.memory.cover(0);
            return self.error(Reply::too_many_hops(self.config.max_hops));
        }
        // Only we may speak for our authserv-id (RFC 8601 5): a field that claims it is forged.
        crate::headers::obscure_forged_auth_results(&mut head[..header_end], &self.config.hostname);
        if let Some(auth) = &self.auth {
            if let Some(from) = unowned_from(&self.sender_rights, &head[..header_end]) {
                let reply = Reply::from_not_owned(&auth.user, &from);
                self.memory.cover(0);
                return self.error(reply);
            }
        }
        let trust = match (&self.auth, self.peer.local_submitter) {
            (Some(auth), _) => TrustClass::Authenticated {
                user: auth.user.clone(),
            },
            (None, true) => TrustClass::LocalNetwork,
            (None, false) => TrustClass::Unverified,
        };
        let envelope = Envelope {
            sender: txn.sender,
            recipients: txn.recipients,
            dsn: txn.dsn,
            body_type: txn.body_type,
            smtputf8: txn.smtputf8,
            client: self.client_info(),
            arrival: self.now,
            trust,
        };
        self.phase = Phase::Waiting;
        let proxied = (txn.proxied == Some(true)).then_some(crate::TransactionRef {
            session: self.peer.id,
            number: txn.number,
        });
        let message = Box::new(Message {
            envelope,
            body,
            proxied,
        });
        // A proxied message always goes to the policy, which sends it on.
        if self.config.checks.messages || proxied.is_some() {
            self.outputs.push_back(Output::CheckMessage(message));
        } else {
            self.outputs.push_back(Output::Enqueue(message));
        }
    }

    fn starttls(&mut self) {
        if self.tls.is_some() {
            self.error(Reply::tls_already_active());
        } else if !self.config.starttls {
            self.error(Reply::tls_not_available());
        } else if !self.input.is_empty() {
            // CVE-2011-0411: never carry plain-text input over into the TLS session.
            self.input.clear();
            self.close_with(Reply::pipelined_after_starttls());
        } else {
            self.reply(Reply::ready_for_tls());
            self.phase = Phase::Waiting;
            self.outputs.push_back(Output::StartTls);
        }
    }

    fn auth(&mut self, mechanism: u64, initial_response: String) {
        if self.config.auth == AuthPolicy::Disabled {
            return self.error(Reply::auth_not_offered());
        }
        if !self.auth_offered() {
            return self.error(Reply::encryption_required());
        }
        if self.auth.is_some() {
            return self.error(Reply::bad_sequence("Already authenticated"));
        }
        if !self.helo.as_ref().is_some_and(|h| h.esmtp) {
            return self.error(Reply::bad_sequence("Send EHLO first"));
        }
        if self.txn.is_some() {
            return self.error(Reply::bad_sequence(
                "AUTH not allowed during a mail transaction",
            ));
        }
        let initial = (!initial_response.is_empty()).then_some(initial_response);
        match (mechanism, initial) {
            (smtp_proto::AUTH_PLAIN, None) => {
                self.phase = Phase::Sasl(SaslStep::PlainResponse);
                self.reply(Reply::auth_challenge(""));
            }
            (smtp_proto::AUTH_PLAIN, Some(initial)) => {
                self.phase = Phase::Sasl(SaslStep::PlainResponse);
                self.sasl_line(initial.as_bytes());
            }
            (smtp_proto::AUTH_LOGIN, None) => {
                self.phase = Phase::Sasl(SaslStep::LoginUsername);
                self.reply(Reply::auth_challenge(sasl::LOGIN_USERNAME_CHALLENGE));
            }
            (smtp_proto::AUTH_LOGIN, Some(initial)) => {
                self.phase = Phase::Sasl(SaslStep::LoginUsername);
                self.sasl_line(initial.as_bytes());
            }
            _ => self.error(Reply::auth_mechanism_unsupported()),
        }
    }

    /// One client response in an AUTH exchange (the line without CRLF, or with it).
    fn sasl_line(&mut self, line: &[u8]) {
        let Phase::Sasl(step) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        let decoded = sasl::decode_line(line);
        let result = decoded.and_then(|message| match step {
            SaslStep::PlainResponse => {
                let (username, password) = sasl::parse_plain(&message)?;
                Ok(Some(Credentials {
                    mechanism: Mechanism::Plain,
                    username,
                    password,
                }))
            }
            SaslStep::LoginUsername => {
                let username = sasl::name(&message)?;
                self.phase = Phase::Sasl(SaslStep::LoginPassword { username });
                self.reply(Reply::auth_challenge(sasl::LOGIN_PASSWORD_CHALLENGE));
                Ok(None)
            }
            SaslStep::LoginPassword { username } => Ok(Some(Credentials {
                mechanism: Mechanism::Login,
                username,
                password: sasl::parse_login_field(message)?,
            })),
        });
        match result {
            Ok(Some(credentials)) => {
                self.phase = Phase::Waiting;
                self.outputs.push_back(Output::Authenticate(credentials));
            }
            Ok(None) => {}
            Err(SaslError::Cancelled) => self.error(Reply::auth_cancelled()),
            Err(SaslError::Malformed) => self.error(Reply::auth_bad_response()),
            Err(SaslError::ProxyRefused) => self.error(Reply::auth_failed()),
        }
    }

    // --- Helpers ----------------------------------------------------------------------------

    fn client_info(&self) -> ClientInfo {
        ClientInfo {
            ip: self.peer.ip,
            helo: self
                .helo
                .as_ref()
                .map(|h| h.name.clone())
                .unwrap_or_default(),
            ptr: None,
            tls: self.tls.clone(),
            auth: self.auth.clone(),
            listener: self.config.listener.clone(),
        }
    }

    fn reply(&mut self, reply: Reply) {
        self.outputs.push_back(Output::Reply(reply));
    }

    /// A refusal that counts towards the error limit.
    fn error(&mut self, reply: Reply) {
        self.reply(reply);
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.close_with(Reply::too_many_errors());
        }
    }

    fn close_with(&mut self, reply: Reply) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.reply(reply);
        self.outputs.push_back(Output::Close);
        self.phase = Phase::Closed;
        self.input.clear();
    }
}

/// The address between `<` and `>` in a MAIL or RCPT line, as sent.
fn bracketed(line: &[u8]) -> Option<&str> {
    let start = line.iter().position(|&b| b == b'<')? + 1;
    let end = start + line[start..].iter().position(|&b| b == b'>')?;
    std::str::from_utf8(&line[start..end]).ok().map(str::trim)
}

/// MAIL parameters smtp-proto understands but backstop does not advertise.
fn unsupported_mail_param(from: &MailFrom<String>) -> Option<&'static str> {
    if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
        Some("BODY=BINARYMIME")
    } else if from.flags & smtp_proto::MAIL_REQUIRETLS != 0 {
        Some("REQUIRETLS")
    } else if from.flags & smtp_proto::MAIL_CONPERM != 0 {
        Some("CONPERM")
    } else if from.by != 0
        || from.flags & (smtp_proto::MAIL_BY_NOTIFY | smtp_proto::MAIL_BY_RETURN) != 0
    {
        Some("BY")
    } else if from.hold_for != 0 {
        Some("HOLDFOR")
    } else if from.hold_until != 0 {
        Some("HOLDUNTIL")
    } else if from.mt_priority != 0 {
        Some("MT-PRIORITY")
    } else if from.mtrk.is_some() {
        Some("MTRK")
    } else if from.solicit.is_some() {
        Some("SOLICIT")
    } else if from.trans_id.is_some() {
        Some("TRANSID")
    } else {
        None
    }
}

fn parse_error_reply(e: smtp_proto::Error) -> Reply {
    use smtp_proto::Error;
    match e {
        Error::UnknownCommand => Reply::unknown_command(),
        Error::InvalidSenderAddress => Reply::bad_sender_syntax(),
        Error::InvalidRecipientAddress => Reply::bad_recipient_syntax(),
        Error::SyntaxError { syntax } => Reply::syntax_error(syntax),
        Error::InvalidParameter { param } => Reply::invalid_parameter(param),
        Error::UnsupportedParameter { param } => Reply::unsupported_parameter(&param),
        Error::NeedsMoreData { .. } | Error::ResponseTooLong | Error::InvalidResponse { .. } => {
            Reply::syntax_error("command")
        }
    }
}

/// The first address in the message's `From:` header that `rights` do not cover, if any.
fn unowned_from(rights: &SenderRights, message: &[u8]) -> Option<String> {
    if matches!(rights, SenderRights::Any) {
        return None;
    }
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let unowned = parsed
        .from()?
        .iter()
        .filter_map(|a| a.address())
        .find(|text| match Address::parse(text) {
            Ok(address) => !rights.allows(&ReversePath::Address(address)),
            // Not an address we could own: not ours to send.
            Err(_) => true,
        })
        .map(str::to_owned);
    unowned
}

/// Where a recipient stands at RCPT before any lookup, by the domains the session serves and
/// whether the client is trusted (logged in, or a local submitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The postmaster of a domain we serve: accepted unverified (RFC 5321 4.5.1).
    Postmaster,
    /// In a local domain: delivered here; the recipient checks decide.
    Local,
    /// In a relay domain: passed on; the recipient checks decide.
    RelayDomain,
    /// Anywhere else, for a trusted client: relayed without a lookup.
    Onward,
}

/// The relay rules of RCPT: a refusal (relay denied, a mailbox name no Maildir can hold), or
/// the recipient's [`Scope`]. `backstop address test` asks the same.
pub fn recipient_scope(
    config: &SessionConfig,
    address: &Address,
    trusted: bool,
) -> Result<Scope, Reply> {
    let local = config.local_domains.contains(address.domain());
    // RFC 5321 4.5.1: postmaster must be accepted for every domain we serve, unverified.
    let is_postmaster = address.local_part().eq_ignore_ascii_case("postmaster")
        && (address.domain().as_str() == config.hostname.to_ascii_lowercase() || local);
    let relay_domain = config.relay_domains.contains(address.domain());
    if !trusted && !is_postmaster && !local && !relay_domain {
        return Err(Reply::relay_denied());
    }
    // `user%foreign@local`, `foreign!user@local` and `"user@foreign"@local` ask a relay to
    // route onward (the percent hack, bang paths). Never on behalf of untrusted clients.
    if !trusted && address.local_part().contains(['%', '!', '@']) {
        return Err(Reply::relay_denied());
    }
    if config.maildir_domains.contains(address.domain())
        && backstop_types::address::maildir_folder_name(address).is_none()
    {
        return Err(Reply::mailbox_name_not_allowed());
    }
    Ok(match (is_postmaster, local, relay_domain) {
        (true, _, _) => Scope::Postmaster,
        (false, true, _) => Scope::Local,
        (false, false, true) => Scope::RelayDomain,
        (false, false, false) => Scope::Onward,
    })
}
