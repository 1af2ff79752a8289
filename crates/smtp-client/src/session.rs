//! [`ClientSession`]: the client side of one SMTP or LMTP connection as a state machine. No
//! socket, no clock: the driver feeds it what the next hop sent ([`ClientSession::handle_input`])
//! and does what [`ClientSession::poll`] asks ([`Action`]).
//!
//! Call order, for the driver:
//! 1. [`ClientSession::new`] once connected; then loop on [`ClientSession::poll`]:
//!    - [`Action::Send`]: write the bytes; [`Action::SendBody`]: write the message (dot-stuffed
//!      or as it is); [`Action::StartTls`]: run the handshake, then
//!      [`ClientSession::tls_established`];
//!    - [`Action::Read`]: read, waiting at most the timeout it names, and give the bytes to
//!      [`ClientSession::handle_input`] (or call [`ClientSession::fail`] with the reason the
//!      read failed);
//!    - [`Action::Ready`]: the session waits for the caller: [`ClientSession::begin`] a
//!      transaction, send a [`ClientSession::command`], or [`ClientSession::quit`];
//!    - [`Action::Finished`], [`Action::Replied`]: what the caller asked for is done;
//!    - [`Action::Failed`], [`Action::Closed`]: the connection is over.
//! 2. Every command line goes out through one writer ([`command_line`]) that refuses CR, LF and
//!    NUL in it.

use std::collections::VecDeque;

use backstop_types::{
    AttemptOutcome, BodyType, EnhancedStatus, Notify, Orcpt, RemoteReply, Ret, ReversePath,
};

use crate::error::{outcome, ClientError, Stage};
use crate::reply::{Capabilities, ReplyReader};
use crate::Credentials;

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes.
    Send(Vec<u8>),
    /// Wait for more of the next hop's reply, at most this long.
    Read(Wait),
    /// Run the TLS handshake now, then call [`ClientSession::tls_established`].
    StartTls,
    /// Write the message: dot-stuffed and ended by `.` (DATA), or as it is (after `BDAT n
    /// LAST`).
    SendBody { stuffed: bool },
    /// Open and idle: the caller may begin a transaction, send a command or quit.
    Ready,
    /// The reply to [`ClientSession::command`] or [`ClientSession::body`].
    Replied(RemoteReply),
    /// A transaction is over; the session is ready again unless it broke meanwhile
    /// ([`ClientSession::is_ready`]).
    Finished(TxnResult),
    /// The session cannot go on: close the connection.
    Failed(ClientError),
    /// QUIT was answered (or not): close the connection.
    Closed,
}

/// Which of RFC 5321's timeouts applies to a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Command,
    DataStart,
    DataEnd,
}

/// How STARTTLS is used (the configuration itself is the driver's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Off,
    Opportunistic,
    Require,
}

/// One message to one next hop.
#[derive(Debug, Clone)]
pub struct Transaction<'a> {
    /// The return path to give (BATV-tagged for our own users' mail).
    pub sender: &'a ReversePath,
    /// Index in the envelope, and the recipient.
    pub recipients: Vec<(usize, &'a backstop_types::Recipient)>,
    pub ret: Option<Ret>,
    pub envid: Option<&'a str>,
    pub body_type: BodyType,
    pub smtputf8: bool,
    /// The message's size as it will be sent (header fields put on top included).
    pub size: u64,
}

/// What a transaction came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// An outcome for every recipient (its index in the envelope).
    pub outcomes: Vec<(usize, AttemptOutcome)>,
    /// What ended the transaction early, if something did (for trying the next host and for
    /// marking a destination down).
    pub error: Option<ClientError>,
    /// The next hop took the DSN parameters (it offered DSN): success reports are its own.
    pub passed_on: bool,
}

/// The client side of one connection.
pub struct ClientSession {
    helo: String,
    lmtp: bool,
    tls: TlsMode,
    auth: Option<Credentials>,
    /// `host[address]`, for made-up replies and outcomes.
    remote: String,
    reader: ReplyReader,
    caps: Capabilities,
    tls_active: bool,
    state: State,
    queue: VecDeque<Action>,
}

enum State {
    Greeting,
    /// EHLO or LHLO sent.
    Ehlo,
    /// HELO sent after EHLO was refused.
    Helo,
    StartTls,
    Handshaking,
    Auth,
    Ready,
    /// A single command or a body is waiting for its reply.
    Command(Wait),
    Txn(Box<Txn>),
    /// RSET sent after a transaction; ready once answered.
    Reset,
    Quit,
    Over,
}

/// What a reply in a transaction answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Mail,
    Rcpt(usize),
    Data,
    /// The end of the message (one per accepted recipient with LMTP).
    End,
    /// `.` sent after a 354 with no recipient taken: its reply is only read.
    Dot,
}

struct Txn {
    /// Index in the envelope per recipient position.
    indexes: Vec<usize>,
    /// The RCPT lines still to send (without pipelining), by position.
    rcpt_lines: Vec<Option<String>>,
    outcomes: Vec<Option<AttemptOutcome>>,
    accepted: Vec<usize>,
    expect: VecDeque<(Expect, Wait)>,
    pipelining: bool,
    chunking: bool,
    size: u64,
    mail_error: Option<ClientError>,
    /// The reply to a pipelined DATA.
    data_reply: Option<RemoteReply>,
    /// Past the envelope: the message was sent (or refused).
    data_done: bool,
    error: Option<ClientError>,
    passed_on: bool,
}

impl ClientSession {
    pub fn new(
        helo: &str,
        lmtp: bool,
        tls: TlsMode,
        auth: Option<Credentials>,
        remote: &str,
    ) -> ClientSession {
        ClientSession {
            helo: helo.to_owned(),
            lmtp,
            tls,
            auth,
            remote: remote.to_owned(),
            reader: ReplyReader::default(),
            caps: Capabilities::default(),
            tls_active: false,
            state: State::Greeting,
            queue: VecDeque::new(),
        }
    }

    /// What the next hop offered after the last EHLO.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Whether the session is open and idle.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready) && self.queue.is_empty()
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Action {
        if let Some(action) = self.queue.pop_front() {
            return action;
        }
        match &self.state {
            State::Greeting
            | State::Ehlo
            | State::Helo
            | State::StartTls
            | State::Auth
            | State::Reset
            | State::Quit => Action::Read(Wait::Command),
            State::Command(wait) => Action::Read(*wait),
            State::Txn(txn) => Action::Read(txn.expect.front().map_or(Wait::Command, |e| e.1)),
            State::Handshaking => Action::StartTls,
            State::Ready => Action::Ready,
            State::Over => Action::Closed,
        }
    }

    /// Bytes from the next hop.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        self.reader.push(bytes);
        loop {
            if matches!(self.state, State::Over | State::Handshaking) {
                return;
            }
            match self.reader.next_reply() {
                Ok(Some(complete)) => self.reply(complete.reply, &complete.raw),
                Ok(None) => return,
                Err(e) => {
                    let stage = self.stage();
                    self.fail(ClientError::garbage(stage, &self.remote, &e.to_string()));
                    return;
                }
            }
        }
    }

    /// The connection failed (closed, timed out, a write or the handshake failed): the
    /// transaction under way, if any, finishes with `error` for every recipient still open,
    /// and the session is over.
    pub fn fail(&mut self, error: ClientError) {
        let state = std::mem::replace(&mut self.state, State::Over);
        self.queue.clear();
        match state {
            State::Txn(mut txn) => {
                txn.error.get_or_insert(error);
                self.queue.push_back(Action::Finished(self.result(*txn)));
            }
            State::Quit | State::Over => self.queue.push_back(Action::Closed),
            _ => self.queue.push_back(Action::Failed(error)),
        }
    }

    /// The stage a failure now would be at.
    pub fn stage(&self) -> Stage {
        match &self.state {
            State::Greeting => Stage::Greeting,
            State::Ehlo | State::Helo => Stage::Ehlo,
            State::StartTls | State::Handshaking => Stage::Tls,
            State::Auth => Stage::Auth,
            State::Txn(txn) => match txn.expect.front().map(|e| e.0) {
                Some(Expect::Mail) | None if !txn.data_done => Stage::Mail,
                Some(Expect::Rcpt(_)) => Stage::Rcpt,
                Some(Expect::Data) => Stage::Data,
                _ => Stage::End,
            },
            State::Command(Wait::DataEnd) => Stage::End,
            _ => Stage::Mail,
        }
    }

    /// The TLS handshake succeeded: EHLO again (RFC 3207 4.2).
    pub fn tls_established(&mut self) {
        if !matches!(self.state, State::Handshaking) {
            return;
        }
        self.tls_active = true;
        self.caps = Capabilities::default();
        self.send_line(
            &format!("{} {}", self.greeting_verb(), self.helo),
            State::Ehlo,
        );
    }

    /// Starts a transaction; the session must be ready.
    pub fn begin(&mut self, txn: &Transaction<'_>) {
        debug_assert!(self.is_ready());
        let mut t = Txn {
            indexes: txn.recipients.iter().map(|(i, _)| *i).collect(),
            rcpt_lines: Vec::new(),
            outcomes: vec![None; txn.recipients.len()],
            accepted: Vec::new(),
            expect: VecDeque::new(),
            pipelining: self.caps.pipelining || self.lmtp,
            chunking: self.caps.chunking,
            size: txn.size,
            mail_error: None,
            data_reply: None,
            data_done: false,
            error: None,
            passed_on: self.caps.dsn && !self.lmtp,
        };
        if let Err(e) = self.check_fit(txn) {
            t.error = Some(e);
            self.queue.push_back(Action::Finished(self.result(t)));
            return;
        }
        let mail = match command_line(&self.mail_command(txn)) {
            Ok(line) => line,
            Err(e) => {
                t.error = Some(e);
                self.queue.push_back(Action::Finished(self.result(t)));
                return;
            }
        };
        for (position, (_, recipient)) in txn.recipients.iter().enumerate() {
            match command_line(&rcpt_command(recipient, self.caps.dsn && !self.lmtp)) {
                Ok(line) => t.rcpt_lines.push(Some(line)),
                Err(e) => {
                    t.rcpt_lines.push(None);
                    t.outcomes[position] = Some(e.outcome(None));
                }
            }
        }
        if t.rcpt_lines.iter().all(Option::is_none) {
            self.queue.push_back(Action::Finished(self.result(t)));
            return;
        }
        let mut batch = mail;
        t.expect.push_back((Expect::Mail, Wait::Command));
        if t.pipelining {
            for (position, line) in t.rcpt_lines.iter_mut().enumerate() {
                if let Some(line) = line.take() {
                    batch.push_str(&line);
                    t.expect.push_back((Expect::Rcpt(position), Wait::Command));
                }
            }
            if !t.chunking {
                batch.push_str("DATA\r\n");
                t.expect.push_back((Expect::Data, Wait::DataStart));
            }
        }
        self.queue.push_back(Action::Send(batch.into_bytes()));
        self.state = State::Txn(Box::new(t));
    }

    /// Sends one command line and reports its reply ([`Action::Replied`]). For callahead and
    /// proxy mode, which speak step by step. The session must be ready.
    pub fn command(&mut self, line: &str) -> Result<(), ClientError> {
        let wait = if line.eq_ignore_ascii_case("DATA") {
            Wait::DataStart
        } else {
            Wait::Command
        };
        let line = command_line(line)?;
        self.queue.push_back(Action::Send(line.into_bytes()));
        self.state = State::Command(wait);
        Ok(())
    }

    /// After a 354: the driver sends the message dot-stuffed, and its final reply is reported
    /// ([`Action::Replied`]).
    pub fn body(&mut self) {
        self.queue.push_back(Action::SendBody { stuffed: true });
        self.state = State::Command(Wait::DataEnd);
    }

    /// The RCPT line for `recipient` as this session would send it (DSN parameters when the
    /// next hop takes them), for [`ClientSession::command`].
    pub fn rcpt_command(&self, recipient: &backstop_types::Recipient) -> String {
        rcpt_command(recipient, self.caps.dsn && !self.lmtp)
    }

    /// Ends the session politely: QUIT, then [`Action::Closed`] whatever the reply.
    pub fn quit(&mut self) {
        if matches!(self.state, State::Over) {
            return;
        }
        self.queue.clear();
        self.queue.push_back(Action::Send(b"QUIT\r\n".to_vec()));
        self.state = State::Quit;
    }

    // --- Replies ----------------------------------------------------------------------------

    fn reply(&mut self, reply: RemoteReply, raw: &[u8]) {
        let positive = reply.code / 100 == 2;
        match std::mem::replace(&mut self.state, State::Over) {
            State::Greeting if positive => {
                let line = format!("{} {}", self.greeting_verb(), self.helo);
                self.send_line(&line, State::Ehlo);
            }
            State::Greeting => self.broke(ClientError::remote(Stage::Greeting, reply)),
            State::Ehlo if positive => {
                self.caps = Capabilities::parse(raw);
                self.after_ehlo();
            }
            State::Ehlo if !self.lmtp => {
                // An old server: plain HELO, no extensions.
                let line = format!("HELO {}", self.helo);
                self.send_line(&line, State::Helo);
            }
            State::Ehlo => self.broke(ClientError::remote(Stage::Ehlo, reply)),
            State::Helo if positive => {
                self.caps = Capabilities::default();
                self.after_ehlo();
            }
            State::Helo => self.broke(ClientError::remote(Stage::Ehlo, reply)),
            State::StartTls if positive => {
                if self.reader.has_pending() {
                    // CVE-2011-0411: nothing may come between the 220 and the handshake.
                    self.broke(ClientError::tls_failed(
                        &self.remote,
                        "it sent data behind its STARTTLS reply",
                    ));
                } else {
                    self.state = State::Handshaking;
                }
            }
            State::StartTls => match self.tls {
                TlsMode::Require => self.broke(ClientError::remote(Stage::Tls, reply)),
                // Opportunistic: a server that refuses STARTTLS gets the mail in plain text,
                // as Postfix's `may` does.
                _ => self.after_tls(),
            },
            State::Auth if reply.code == 235 => self.ready(),
            State::Auth => {
                let user = self
                    .auth
                    .as_ref()
                    .map_or("", |c| c.user.as_str())
                    .to_owned();
                self.broke(ClientError::login(
                    &self.remote,
                    format!("refused our login as {user}: {} {}", reply.code, reply.text),
                ));
            }
            State::Command(_) => {
                self.state = State::Ready;
                self.queue.push_back(Action::Replied(reply));
            }
            State::Txn(txn) => self.txn_reply(txn, reply),
            State::Reset if positive => self.ready_quietly(),
            State::Reset => self.broke(ClientError::remote(Stage::Mail, reply)),
            State::Quit => self.queue.push_back(Action::Closed),
            State::Ready | State::Handshaking | State::Over => {
                // A reply nobody asked for: the next hop is out of step.
                self.broke(ClientError::garbage(
                    Stage::Mail,
                    &self.remote,
                    "a reply to no command",
                ));
            }
        }
    }

    fn after_ehlo(&mut self) {
        if self.tls_active {
            return self.after_tls();
        }
        match (self.tls, self.caps.starttls) {
            (TlsMode::Off, _) | (TlsMode::Opportunistic, false) => self.after_tls(),
            (TlsMode::Require, false) => self.broke(ClientError::tls_not_offered(&self.remote)),
            (TlsMode::Opportunistic | TlsMode::Require, true) => {
                self.send_line("STARTTLS", State::StartTls)
            }
        }
    }

    fn after_tls(&mut self) {
        let Some(credentials) = &self.auth else {
            return self.ready();
        };
        if !self.tls_active {
            return self.broke(ClientError::login(
                &self.remote,
                "not sending credentials without TLS",
            ));
        }
        if !self.caps.auth_plain {
            return self.broke(ClientError::login(
                &self.remote,
                "AUTH PLAIN is not offered",
            ));
        }
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{}\0{}", credentials.user, credentials.password));
        self.send_line(&format!("AUTH PLAIN {token}"), State::Auth);
    }

    fn ready(&mut self) {
        self.state = State::Ready;
        self.queue.push_back(Action::Ready);
    }

    /// Ready again after a transaction (the caller already has its result).
    fn ready_quietly(&mut self) {
        self.state = State::Ready;
    }

    /// The connection cannot be used: the caller learns why.
    fn broke(&mut self, error: ClientError) {
        self.state = State::Over;
        self.queue.push_back(Action::Failed(error));
    }

    fn send_line(&mut self, line: &str, then: State) {
        match command_line(line) {
            Ok(line) => {
                self.queue.push_back(Action::Send(line.into_bytes()));
                self.state = then;
            }
            Err(e) => self.broke(e),
        }
    }

    fn greeting_verb(&self) -> &'static str {
        if self.lmtp {
            "LHLO"
        } else {
            "EHLO"
        }
    }

    // --- Transactions -----------------------------------------------------------------------

    fn txn_reply(&mut self, mut t: Box<Txn>, reply: RemoteReply) {
        let Some((expect, _)) = t.expect.pop_front() else {
            return self.broke(ClientError::garbage(
                Stage::Mail,
                &self.remote,
                "a reply to no command",
            ));
        };
        let positive = reply.code / 100 == 2;
        match expect {
            Expect::Mail if positive => {
                if !t.pipelining {
                    self.next_rcpt(&mut t);
                }
            }
            Expect::Mail => {
                t.mail_error = Some(ClientError::remote(Stage::Mail, reply));
                if !t.pipelining {
                    t.data_done = true;
                }
            }
            // After a refused MAIL, the replies to pipelined RCPTs say nothing of them.
            Expect::Rcpt(_) if t.mail_error.is_some() => {}
            Expect::Rcpt(position) => {
                if positive {
                    t.accepted.push(position);
                } else {
                    t.outcomes[position] = Some(outcome(Some(&self.remote), reply));
                }
                if !t.pipelining {
                    self.next_rcpt(&mut t);
                }
            }
            Expect::Data if t.pipelining => t.data_reply = Some(reply),
            Expect::Data => {
                if reply.code == 354 {
                    self.send_body(&mut t, true);
                } else {
                    let error = ClientError::remote(Stage::Data, reply);
                    self.fail_accepted(&mut t, &error);
                    t.error = Some(error);
                    t.data_done = true;
                    return self.finish_and_reset(t, true);
                }
            }
            Expect::End => {
                let out = outcome(Some(&self.remote), reply);
                if self.lmtp {
                    // One reply per accepted recipient, in RCPT order (RFC 2033 4.2).
                    let position = t.accepted[t.accepted.len() - 1 - t.expect.len()];
                    t.outcomes[position] = Some(out);
                } else {
                    for &position in &t.accepted {
                        t.outcomes[position] = Some(out.clone());
                    }
                }
            }
            Expect::Dot => {}
        }
        if !t.expect.is_empty() {
            self.state = State::Txn(t);
            return;
        }
        if t.data_done {
            return self.finish_and_reset(t, false);
        }
        self.envelope_done(t);
    }

    fn next_rcpt(&mut self, t: &mut Txn) {
        let next = t
            .rcpt_lines
            .iter_mut()
            .enumerate()
            .find_map(|(position, line)| line.take().map(|l| (position, l)));
        match next {
            Some((position, line)) => {
                self.queue.push_back(Action::Send(line.into_bytes()));
                t.expect.push_back((Expect::Rcpt(position), Wait::Command));
            }
            None if t.accepted.is_empty() => {}
            None => {
                self.queue.push_back(Action::Send(b"DATA\r\n".to_vec()));
                t.expect.push_back((Expect::Data, Wait::DataStart));
            }
        }
    }

    /// Every envelope reply is in: send the message, or end the transaction.
    fn envelope_done(&mut self, mut t: Box<Txn>) {
        t.data_done = true;
        if let Some(error) = t.mail_error.take() {
            t.error = Some(error);
            // A pipelined DATA may have been answered 354 all the same: end the empty message.
            if t.data_reply.as_ref().is_some_and(|r| r.code == 354) {
                return self.dot(t);
            }
            return self.finish_and_reset(t, false);
        }
        if t.accepted.is_empty() {
            if t.data_reply.as_ref().is_some_and(|r| r.code == 354) {
                return self.dot(t);
            }
            // MAIL was taken: the transaction is open until RSET.
            return self.finish_and_reset(t, true);
        }
        if t.chunking {
            let line = format!("BDAT {} LAST\r\n", t.size);
            self.queue.push_back(Action::Send(line.into_bytes()));
            self.send_body(&mut t, false);
            self.state = State::Txn(t);
            return;
        }
        match t.data_reply.take() {
            Some(reply) if reply.code == 354 => self.send_body(&mut t, true),
            Some(reply) => {
                let error = ClientError::remote(Stage::Data, reply);
                self.fail_accepted(&mut t, &error);
                t.error = Some(error);
                return self.finish_and_reset(t, true);
            }
            // Without pipelining DATA goes out after the last RCPT (`next_rcpt`), so the
            // envelope is never done without it.
            None => {
                return self.broke(ClientError::garbage(
                    Stage::Data,
                    &self.remote,
                    "the transaction lost its DATA",
                ))
            }
        }
        self.state = State::Txn(t);
    }

    fn send_body(&mut self, t: &mut Txn, stuffed: bool) {
        t.data_done = true;
        self.queue.push_back(Action::SendBody { stuffed });
        let replies = if self.lmtp { t.accepted.len() } else { 1 };
        for _ in 0..replies {
            t.expect.push_back((Expect::End, Wait::DataEnd));
        }
    }

    fn dot(&mut self, mut t: Box<Txn>) {
        self.queue.push_back(Action::Send(b".\r\n".to_vec()));
        t.expect.push_back((Expect::Dot, Wait::DataEnd));
        t.data_done = true;
        self.state = State::Txn(t);
    }

    fn fail_accepted(&self, t: &mut Txn, error: &ClientError) {
        for &position in &t.accepted {
            t.outcomes[position] = Some(error.outcome(Some(&self.remote)));
        }
    }

    /// Reports the transaction; with `reset`, says RSET first (MAIL was taken but no message
    /// followed), so the session is clean for the next one.
    fn finish_and_reset(&mut self, t: Box<Txn>, reset: bool) {
        let result = self.result(*t);
        self.queue.push_back(Action::Finished(result));
        if reset {
            self.queue.push_back(Action::Send(b"RSET\r\n".to_vec()));
            self.state = State::Reset;
        } else {
            self.state = State::Ready;
        }
    }

    fn result(&self, t: Txn) -> TxnResult {
        let fallback = t
            .error
            .clone()
            .or(t.mail_error.clone())
            .unwrap_or_else(ClientError::no_reply_for_recipient);
        let remote = match fallback.source {
            crate::Source::Local => None,
            _ => Some(self.remote.as_str()),
        };
        TxnResult {
            outcomes: t
                .indexes
                .iter()
                .zip(t.outcomes)
                .map(|(&i, o)| (i, o.unwrap_or_else(|| fallback.outcome(remote))))
                .collect(),
            passed_on: t.passed_on && t.error.is_none(),
            error: t.error.or(t.mail_error),
        }
    }

    /// Whether the next hop can take this message at all (RFC 6531, 6152, 3030, 1870).
    fn check_fit(&self, txn: &Transaction<'_>) -> Result<(), ClientError> {
        let remote = &self.remote;
        if txn.smtputf8 && !self.caps.smtputf8 {
            return Err(ClientError::cannot_take(
                550,
                EnhancedStatus(5, 6, 7),
                format!("{remote} does not support SMTPUTF8, which this message needs"),
            ));
        }
        match txn.body_type {
            BodyType::EightBitMime if !self.caps.eightbitmime => {
                return Err(ClientError::cannot_take(
                    554,
                    EnhancedStatus(5, 6, 3),
                    format!("{remote} does not support 8BITMIME, which this message needs"),
                ));
            }
            BodyType::BinaryMime if !(self.caps.binarymime && self.caps.chunking) => {
                return Err(ClientError::cannot_take(
                    554,
                    EnhancedStatus(5, 6, 3),
                    format!("{remote} does not support BINARYMIME, which this message needs"),
                ));
            }
            _ => {}
        }
        if let Some(limit) = self.caps.size {
            if txn.size > limit {
                return Err(ClientError::cannot_take(
                    552,
                    EnhancedStatus(5, 3, 4),
                    format!(
                        "message size {} exceeds {remote}'s limit of {limit}",
                        txn.size
                    ),
                ));
            }
        }
        Ok(())
    }

    fn mail_command(&self, txn: &Transaction<'_>) -> String {
        let mut mail = format!("MAIL FROM:{}", txn.sender);
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", txn.size));
        }
        match txn.body_type {
            BodyType::SevenBit => {}
            BodyType::EightBitMime if self.caps.eightbitmime => mail.push_str(" BODY=8BITMIME"),
            BodyType::EightBitMime => {}
            BodyType::BinaryMime => mail.push_str(" BODY=BINARYMIME"),
        }
        if txn.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.caps.dsn && !self.lmtp {
            match txn.ret {
                Some(Ret::Full) => mail.push_str(" RET=FULL"),
                Some(Ret::Headers) => mail.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = txn.envid {
                mail.push_str(&format!(
                    " ENVID={}",
                    backstop_types::orcpt::encode_xtext(envid.as_bytes())
                ));
            }
        }
        mail
    }
}

/// `RCPT TO`, with the recipient's DSN parameters when the server takes them.
fn rcpt_command(recipient: &backstop_types::Recipient, dsn: bool) -> String {
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
            rcpt.push_str(&format!(" ORCPT={}", param(orcpt)));
        }
    }
    rcpt
}

/// The ORCPT parameter as checked at RCPT and encoded again (never what the client sent).
fn param(orcpt: &Orcpt) -> String {
    orcpt.to_param()
}

/// The one writer of command lines: `line` and CRLF, unless `line` holds CR, LF or NUL, which
/// would end the command early and start another (command injection): refused, never sent.
pub fn command_line(line: &str) -> Result<String, ClientError> {
    backstop_types::text::one_line("an SMTP command", line).map_err(ClientError::unsafe_command)?;
    Ok(format!("{line}\r\n"))
}

#[cfg(test)]
mod tests;
