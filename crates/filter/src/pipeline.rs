//! The content pipeline: the configured checks, in order, on the whole message before the
//! reply to DATA, so that a refusal reaches the real sender through the sending server.
//!
//! Each check says continue (possibly with changes: header fields, the body, the envelope),
//! refuse (a 5xx or 4xx reply), quarantine or discard; the first that does not continue ends
//! the pipeline. The whole run has one deadline. A check that fails (its scanner down, slow,
//! or talking nonsense) gives `451 4.7.1` unless that check says `on_error = "accept"`, and
//! then every message it lets through unchecked is logged.

use std::time::{Duration, Instant};

use backstop_types::{Address, Envelope, Notify, Recipient, Reply, ReversePath, Spooled};
use tracing::warn;

use crate::error::ScanError;
use crate::{clamd, milter, rspamd, rules};

/// The message as the checks see it, with the changes made so far.
#[derive(Debug, Clone)]
pub struct Draft {
    pub envelope: Envelope,
    /// The whole message, CRLF line ends; with a `tail`, its header section only.
    pub message: Vec<u8>,
    /// The rest of a message too large to read into memory (`[content] max_scan_size`), in
    /// its spool file: only the checks that can stream it (clamd, milters) see it, and a new
    /// body from a check replaces it.
    pub tail: Option<Spooled>,
    /// Whether a check changed the message or the envelope.
    pub changed: bool,
    /// Whether a check gave the message a new body (header changes leave it as it was).
    pub body_replaced: bool,
}

/// A change a check asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A header field after the others.
    AddHeader {
        name: String,
        value: String,
    },
    /// A header field at `index` (0: on top).
    InsertHeader {
        index: usize,
        name: String,
        value: String,
    },
    /// The `occurrence`th (from 1) field called `name` gets `value`; an empty value removes it.
    ChangeHeader {
        name: String,
        occurrence: usize,
        value: String,
    },
    /// Every field called `name` goes.
    RemoveHeader {
        name: String,
    },
    ReplaceBody(Vec<u8>),
    ChangeSender(ReversePath),
    AddRecipient(Address),
    DeleteRecipient(Address),
}

/// What one check says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Continue(Vec<Change>),
    Refuse(Reply),
    Quarantine(String),
    Discard(String),
}

/// The pipeline's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accept the draft (changed or not).
    Accept,
    Refuse(Reply),
    Quarantine(backstop_types::quarantine::Reason),
    Discard(String),
}

/// What a failing check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// `451 4.7.1`: the client tries again later.
    Tempfail,
    /// Go on without this check (logged with each message).
    Accept,
}

/// One configured check.
#[derive(Debug, Clone)]
pub struct Check {
    /// For the log: `rule no-exe`, `clamd 127.0.0.1:3310`, ...
    pub name: String,
    pub scanner: Scanner,
    pub on_error: OnError,
}

#[derive(Debug, Clone)]
pub enum Scanner {
    Rule(rules::Rule),
    Milter(milter::Milter),
    Rspamd(rspamd::Rspamd),
    Clamd(clamd::Clamd),
}

impl Scanner {
    /// The scanner's kind, as log lines and metrics name the check that decided.
    pub fn kind(&self) -> &'static str {
        match self {
            Scanner::Rule(_) => "rule",
            Scanner::Milter(_) => "milter",
            Scanner::Rspamd(_) => "rspamd",
            Scanner::Clamd(_) => "clamd",
        }
    }

    /// Whether it can read a spooled message from its file, a piece at a time; the others
    /// need the message whole in memory.
    pub fn streams(&self) -> bool {
        matches!(self, Scanner::Milter(_) | Scanner::Clamd(_))
    }

    async fn scan(&self, draft: &Draft) -> Result<Step, ScanError> {
        match self {
            // Regexes over the decoded message: off the async workers, so the deadline holds.
            Scanner::Rule(rule) => {
                let (rule, message) = (rule.clone(), draft.message.clone());
                crate::cpu::off_thread(move || rule.check(&message))
                    .await
                    .map_err(|e| ScanError::Local(e.to_string()))
            }
            Scanner::Milter(milter) => milter.check(draft).await,
            Scanner::Rspamd(rspamd) => rspamd.check(draft).await,
            Scanner::Clamd(clamd) => clamd.check(&draft.message, draft.tail.as_ref()).await,
        }
    }
}

/// The checks and the deadline of a whole run.
pub struct Pipeline {
    pub checks: Vec<Check>,
    pub deadline: Duration,
}

impl Pipeline {
    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// One check's scan, cut off at the run's `deadline`.
    async fn scan_within(
        &self,
        check: &Check,
        draft: &Draft,
        deadline: Instant,
    ) -> Result<Step, ScanError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, check.scanner.scan(draft)).await {
            Ok(result) => result,
            Err(_) => Err(ScanError::Deadline {
                seconds: self.deadline.as_secs(),
            }),
        }
    }

    /// Whether a virus scanner (clamd) is among the checks.
    pub fn scans_for_viruses(&self) -> bool {
        self.checks
            .iter()
            .any(|c| matches!(c.scanner, Scanner::Clamd(_)))
    }

    /// The virus scanners' say on a message something else put in quarantine (sender
    /// authentication, the RFC 5322 check, a check before them): the clamd checks from the
    /// `from`th on. A quarantine a recipient may lift must not let a virus through with it:
    /// `Some(Refuse)` when one refuses (or fails with `on_error = tempfail`),
    /// `Some(Quarantine)` with the scanner's reason when one says quarantine, `None` when
    /// they all pass (or there are none).
    pub async fn virus_verdict(&self, draft: &Draft, from: usize) -> Option<Outcome> {
        self.virus_verdict_by(draft, from, Instant::now() + self.deadline)
            .await
    }

    /// [`Pipeline::virus_verdict`] within a run's `deadline` (one deadline for a whole run).
    async fn virus_verdict_by(
        &self,
        draft: &Draft,
        from: usize,
        deadline: Instant,
    ) -> Option<Outcome> {
        for check in self.checks.iter().skip(from) {
            if !matches!(check.scanner, Scanner::Clamd(_)) {
                continue;
            }
            let result = self.scan_within(check, draft, deadline).await;
            match result {
                Ok(Step::Continue(_)) | Ok(Step::Discard(_)) => {}
                Ok(Step::Refuse(reply)) => return Some(Outcome::Refuse(reply.decided_by("clamd"))),
                Ok(Step::Quarantine(why)) => {
                    return Some(Outcome::Quarantine(
                        backstop_types::quarantine::Reason::content("clamd", &check.name, why),
                    ))
                }
                Err(error) => match check.on_error {
                    OnError::Tempfail => {
                        warn!(check = %check.name, %error, "virus check of a message held for another reason failed: 451");
                        return Some(Outcome::Refuse(
                            Reply::content_check_unavailable().decided_by("clamd"),
                        ));
                    }
                    OnError::Accept => {
                        warn!(check = %check.name, %error, "virus check of a message held for another reason failed (on_error = accept)");
                    }
                },
            }
        }
        None
    }

    /// Runs the checks on `draft`, applying the changes they ask for.
    pub async fn run(&self, draft: &mut Draft) -> Outcome {
        let deadline = Instant::now() + self.deadline;
        for (index, check) in self.checks.iter().enumerate() {
            if draft.tail.is_some() && !check.scanner.streams() {
                warn!(check = %check.name, sender = %draft.envelope.sender, "content check skipped: the message is larger than max_scan_size");
                continue;
            }
            let result = self.scan_within(check, draft, deadline).await;
            // Changes that cannot be made fail the check, as any other nonsense from it does.
            let result = match result {
                Ok(Step::Continue(changes)) => draft
                    .apply_all(changes)
                    .map(|()| Step::Continue(Vec::new())),
                other => other,
            };
            match result {
                Ok(Step::Continue(_)) => {}
                Ok(Step::Refuse(reply)) => {
                    return Outcome::Refuse(reply.decided_by(check.scanner.kind()))
                }
                Ok(Step::Quarantine(why)) => {
                    // The clamd checks after this one still look: a hold a recipient may lift
                    // must not carry a virus past them.
                    if !matches!(check.scanner, Scanner::Clamd(_)) {
                        if let Some(outcome) =
                            self.virus_verdict_by(draft, index + 1, deadline).await
                        {
                            return outcome;
                        }
                    }
                    return Outcome::Quarantine(backstop_types::quarantine::Reason::content(
                        check.scanner.kind(),
                        &check.name,
                        why,
                    ));
                }
                Ok(Step::Discard(why)) => {
                    return Outcome::Discard(format!("{}: {why}", check.name))
                }
                Err(error) => match check.on_error {
                    OnError::Tempfail => {
                        warn!(check = %check.name, %error, "content check failed: 451");
                        return Outcome::Refuse(
                            Reply::content_check_unavailable().decided_by(check.scanner.kind()),
                        );
                    }
                    OnError::Accept => {
                        warn!(
                            check = %check.name,
                            %error,
                            sender = %draft.envelope.sender,
                            "content check failed; message let through unchecked (on_error = accept)"
                        );
                    }
                },
            }
        }
        Outcome::Accept
    }
}

impl Change {
    /// Why this change cannot be made to a message that goes on to a next hop, if it cannot:
    /// a header field name that is none (RFC 5322 2.2: printable ASCII but `:`), a value whose
    /// line breaks are not folds, a NUL or a bare CR in a value or a new body. Made as asked,
    /// such a change would end the header early (the fields after it read as body) or send a
    /// line ending the session refuses from clients.
    pub fn problem(&self) -> Option<String> {
        let (name, value) = match self {
            Change::AddHeader { name, value } | Change::InsertHeader { name, value, .. } => {
                (name, value)
            }
            // An empty value removes the field; any other adds it when it is not there.
            Change::ChangeHeader { name, value, .. } if !value.is_empty() => (name, value),
            Change::ReplaceBody(body) => {
                return line_end_problem(&crlf(body)).map(|p| format!("a new body with {p}"));
            }
            Change::ChangeHeader { .. }
            | Change::RemoveHeader { .. }
            | Change::ChangeSender(_)
            | Change::AddRecipient(_)
            | Change::DeleteRecipient(_) => return None,
        };
        let field_name =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !field_name {
            return Some(format!("a header field name {name:?}"));
        }
        let value = field_value(value);
        let value = value.as_slice();
        let fold = |i: usize| matches!(value.get(i + 1), Some(b' ' | b'\t'));
        let problem = line_end_problem(value).or_else(|| {
            value
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'\n' && !fold(i))
                .then_some("a line break that is no fold")
        });
        problem.map(|p| format!("a value of {name} with {p}"))
    }
}

/// A NUL or a CR without its LF, which no message may hold (the session refuses them).
fn line_end_problem(text: &[u8]) -> Option<&'static str> {
    text.iter().enumerate().find_map(|(i, &b)| match b {
        0 => Some("a NUL"),
        b'\r' if text.get(i + 1) != Some(&b'\n') => Some("a bare CR"),
        _ => None,
    })
}

impl Draft {
    pub fn new(envelope: Envelope, message: Vec<u8>) -> Draft {
        Draft {
            envelope,
            message,
            tail: None,
            changed: false,
            body_replaced: false,
        }
    }

    /// A message too large for memory: its header section, and the rest in its spool file.
    pub fn spooled(envelope: Envelope, head: Vec<u8>, tail: Spooled) -> Draft {
        Draft {
            tail: Some(tail),
            ..Draft::new(envelope, head)
        }
    }

    /// Where the body starts (after the empty line), or the end for a message without one.
    pub fn body_offset(&self) -> usize {
        body_offset(&self.message)
    }

    /// The header fields in order, as (name, value) with the value unfolded as received
    /// (CRLF kept inside folded values) and without the space after the colon.
    pub fn headers(&self) -> Vec<(String, String)> {
        fields(&self.message[..self.body_offset()])
            .into_iter()
            .map(|(start, end)| {
                let text = String::from_utf8_lossy(&self.message[start..end]);
                let text = text.trim_end_matches(['\r', '\n']);
                match text.split_once(':') {
                    Some((name, value)) => (
                        name.trim_end().to_owned(),
                        value.strip_prefix(' ').unwrap_or(value).to_owned(),
                    ),
                    None => (text.to_owned(), String::new()),
                }
            })
            .collect()
    }

    /// Makes `changes` in order, or none of them when one cannot be made
    /// ([`Change::problem`]): a scanner that asks for such a change is broken.
    pub fn apply_all(&mut self, changes: Vec<Change>) -> Result<(), ScanError> {
        if let Some(problem) = changes.iter().find_map(Change::problem) {
            return Err(ScanError::BrokenChange(format!("asked for {problem}")));
        }
        for change in changes {
            self.apply(change);
        }
        Ok(())
    }

    /// Makes one change as asked; callers with changes from a scanner use
    /// [`Draft::apply_all`], which refuses those that would break the message.
    pub fn apply(&mut self, change: Change) {
        self.changed = true;
        let body = self.body_offset();
        let spans = fields(&self.message[..body]);
        match change {
            Change::AddHeader { name, value } => {
                let at = spans.last().map_or(0, |(_, end)| *end);
                self.message
                    .splice(at..at, header_field(&name, &value).into_bytes());
            }
            Change::InsertHeader { index, name, value } => {
                let at = spans.get(index).map_or_else(
                    || spans.last().map_or(0, |(_, end)| *end),
                    |(start, _)| *start,
                );
                self.message
                    .splice(at..at, header_field(&name, &value).into_bytes());
            }
            Change::ChangeHeader {
                name,
                occurrence,
                value,
            } => {
                let found = spans
                    .iter()
                    .filter(|(start, end)| {
                        field_name(&self.message[*start..*end]) == name.to_ascii_lowercase()
                    })
                    .nth(occurrence.saturating_sub(1));
                match (found, value.is_empty()) {
                    (Some(&(start, end)), true) => {
                        self.message.drain(start..end);
                    }
                    (Some(&(start, end)), false) => {
                        // The field keeps its name as the message spells it.
                        let field = &self.message[start..end];
                        let colon = field.iter().position(|&b| b == b':').unwrap_or(0);
                        let spelled = String::from_utf8_lossy(&field[..colon]).trim().to_owned();
                        self.message
                            .splice(start..end, header_field(&spelled, &value).into_bytes());
                    }
                    // Changing a field that is not there adds it (as libmilter documents).
                    (None, false) => self.apply(Change::AddHeader { name, value }),
                    (None, true) => {}
                }
            }
            Change::RemoveHeader { name } => {
                let name = name.to_ascii_lowercase();
                for &(start, end) in spans.iter().rev() {
                    if field_name(&self.message[start..end]) == name {
                        self.message.drain(start..end);
                    }
                }
            }
            Change::ReplaceBody(new) => {
                self.tail = None;
                self.body_replaced = true;
                self.message.truncate(body);
                if body == self.message.len() && !self.message.ends_with(b"\r\n\r\n") {
                    self.message.extend_from_slice(b"\r\n");
                }
                self.message.extend_from_slice(&crlf(&new));
            }
            Change::ChangeSender(sender) => self.envelope.sender = sender,
            Change::AddRecipient(address) => {
                if !self
                    .envelope
                    .recipients
                    .iter()
                    .any(|r| r.address == address)
                {
                    self.envelope.recipients.push(Recipient {
                        address,
                        notify: Notify::Default,
                        orcpt: None,
                    });
                }
            }
            Change::DeleteRecipient(address) => {
                self.envelope.recipients.retain(|r| r.address != address);
            }
        }
    }
}

/// Where the body of `message` starts (after the empty line), or its end when it has none.
pub fn body_offset(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 2;
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |p| p + 4)
}

/// The (start, end) of each header field in `header` (folded lines included, CRLF included).
fn fields(header: &[u8]) -> Vec<(usize, usize)> {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    let mut at = 0;
    while at < header.len() {
        let end = header[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(header.len(), |p| at + p + 1);
        let line = &header[at..end];
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if line == b"\r\n" {
            break;
        }
        match (continuation, spans.last_mut()) {
            (true, Some(last)) => last.1 = end,
            _ => spans.push((at, end)),
        }
        at = end;
    }
    spans
}

fn field_name(field: &[u8]) -> String {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
    String::from_utf8_lossy(&field[..colon])
        .trim()
        .to_ascii_lowercase()
}

/// `Name: value` with CRLF line ends (a scanner may fold with LF alone).
fn header_field(name: &str, value: &str) -> String {
    format!(
        "{name}: {}\r\n",
        String::from_utf8_lossy(&field_value(value))
    )
}

/// A value as a field holds it: bare LFs made CRLF, line breaks at the end dropped.
fn field_value(value: &str) -> Vec<u8> {
    let mut value = crlf(value.as_bytes());
    while value.last().is_some_and(|b| matches!(b, b'\r' | b'\n')) {
        value.pop();
    }
    value
}

/// `text` with every bare LF made CRLF.
fn crlf(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 50);
    for (i, &b) in text.iter().enumerate() {
        if b == b'\n' && (i == 0 || text[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests;
