//! A milter client: the sendmail mail filter protocol, version 6, as Postfix and sendmail
//! speak it, over TCP or a Unix socket.
//!
//! backstop asks a milter once the whole message is in, before the reply to DATA: one
//! connection per message replays connect, HELO, MAIL, each RCPT, DATA, the header fields,
//! the body and end-of-message, each with its macros, skipping the steps the milter turned
//! off in negotiation and not waiting where it said it will not answer. A reject or tempfail
//! at any step refuses the message (also one for a single recipient, since the client was
//! told 250 for each already). At end-of-message the milter may change header fields, the
//! body, the sender and the recipients, and ask for quarantine.

use std::net::IpAddr;

use backstop_types::{Address, Reply, ReversePath};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::ScanError;
use crate::net::{Endpoint, Stream};
use crate::pipeline::{Change, Draft, Step};

#[derive(Debug, Clone)]
pub struct Milter {
    pub endpoint: Endpoint,
    /// Our host name, the `j` macro.
    pub hostname: String,
}

const VERSION: u32 = 6;

// What the milter may do (SMFIF_*): add, change and insert header fields, replace the body,
// add and delete recipients (with ESMTP arguments too), quarantine, change the sender, and
// set the list of macros it wants.
const ACTIONS: u32 = 0x1ff;

// The steps and replies a milter may leave out (SMFIP_*): every one we know.
const NO_CONNECT: u32 = 0x1;
const NO_HELO: u32 = 0x2;
const NO_MAIL: u32 = 0x4;
const NO_RCPT: u32 = 0x8;
const NO_BODY: u32 = 0x10;
const NO_HEADERS: u32 = 0x20;
const NO_EOH: u32 = 0x40;
const NR_HEADER: u32 = 0x80;
const NO_DATA: u32 = 0x200;
const NR_CONNECT: u32 = 0x1000;
const NR_HELO: u32 = 0x2000;
const NR_MAIL: u32 = 0x4000;
const NR_RCPT: u32 = 0x8000;
const NR_DATA: u32 = 0x10000;
const NR_EOH: u32 = 0x40000;
const NR_BODY: u32 = 0x80000;
const HEADER_LEADING_SPACE: u32 = 0x100000;
const PROTOCOL: u32 = 0x1fffff;

/// A body chunk may be this long at most (MILTER_CHUNK_SIZE).
const CHUNK: usize = 65535;
/// A packet from the milter may be this long at most.
const MAX_PACKET: usize = 1 << 20;

/// The milter's answer to one step.
enum Answer {
    Continue,
    /// Accept the message; ask nothing more.
    Accept,
    Refuse(Reply),
    Discard,
    /// Skip the rest of the body.
    Skip,
}

/// One conversation.
struct Conversation {
    stream: Box<dyn Stream>,
    protocol: u32,
    endpoint: String,
}

impl Milter {
    pub async fn check(&self, draft: &Draft) -> Result<Step, ScanError> {
        let stream = crate::net::connect(&self.endpoint)
            .await
            .map_err(|source| ScanError::Network {
                scanner: "milter",
                endpoint: self.endpoint.clone(),
                source,
            })?;
        self.check_on(stream, draft).await
    }

    /// [`Milter::check`] over a connection that is already open: the whole conversation, from
    /// negotiation to goodbye. The fuzz target talks to an in-memory milter through it.
    pub async fn check_on(
        &self,
        stream: Box<dyn Stream>,
        draft: &Draft,
    ) -> Result<Step, ScanError> {
        let mut c = Conversation {
            stream,
            protocol: 0,
            endpoint: self.endpoint.to_string(),
        };
        let result = self.talk(&mut c, draft).await;
        // Goodbye, whatever happened; the milter closes the connection.
        let _ = c.send(b'Q', &[]).await;
        result.map_err(|reason| ScanError::Protocol {
            scanner: "milter",
            endpoint: self.endpoint.clone(),
            reason,
        })
    }

    async fn talk(&self, c: &mut Conversation, draft: &Draft) -> Result<Step, String> {
        c.negotiate().await?;
        let envelope = &draft.envelope;
        let client = &envelope.client;
        let client_name = client
            .ptr
            .as_ref()
            .map_or_else(|| format!("[{}]", client.ip), ToString::to_string);
        let sender = match envelope.sender.address() {
            Some(a) => a.to_string(),
            None => String::new(),
        };
        let mut macros = vec![
            ("j", self.hostname.clone()),
            ("{daemon_name}", "backstop".to_owned()),
            ("_", format!("{client_name} [{}]", client.ip)),
            ("{client_addr}", client.ip.to_string()),
            ("{client_name}", client_name.clone()),
        ];
        if c.wants(NO_CONNECT) {
            c.macros(b'C', &macros).await?;
            let mut data = line(&client_name)?;
            match client.ip {
                IpAddr::V4(ip) => {
                    data.push(b'4');
                    data.extend_from_slice(&0u16.to_be_bytes());
                    data.extend(line(&ip.to_string())?);
                }
                IpAddr::V6(ip) => {
                    data.push(b'6');
                    data.extend_from_slice(&0u16.to_be_bytes());
                    data.extend(line(&ip.to_string())?);
                }
            }
            if let Some(step) = c.step(b'C', &data, NR_CONNECT).await? {
                return Ok(step);
            }
        }
        if c.wants(NO_HELO) {
            macros = Vec::new();
            if let Some(tls) = &client.tls {
                macros.push(("{tls_version}", tls.version.clone()));
                macros.push(("{cipher}", tls.cipher.clone()));
            }
            c.macros(b'H', &macros).await?;
            if let Some(step) = c.step(b'H', &line(&client.helo)?, NR_HELO).await? {
                return Ok(step);
            }
        }
        if c.wants(NO_MAIL) {
            macros = vec![
                ("{mail_addr}", sender.clone()),
                ("{mail_mailer}", "smtp".into()),
            ];
            if let Some(auth) = &client.auth {
                macros.push(("{auth_type}", auth.mechanism.clone()));
                macros.push(("{auth_authen}", auth.user.clone()));
            }
            c.macros(b'M', &macros).await?;
            if let Some(step) = c
                .step(b'M', &line(&format!("<{sender}>"))?, NR_MAIL)
                .await?
            {
                return Ok(step);
            }
        }
        if c.wants(NO_RCPT) {
            for recipient in &envelope.recipients {
                let address = recipient.address.to_string();
                c.macros(b'R', &[("{rcpt_addr}", address.clone())]).await?;
                if let Some(step) = c
                    .step(b'R', &line(&format!("<{address}>"))?, NR_RCPT)
                    .await?
                {
                    return Ok(step);
                }
            }
        }
        if c.wants(NO_DATA) {
            if let Some(step) = c.step(b'T', &[], NR_DATA).await? {
                return Ok(step);
            }
        }
        if c.wants(NO_HEADERS) {
            let leading_space = c.protocol & HEADER_LEADING_SPACE != 0;
            for (name, value) in draft.headers() {
                let value = value.replace("\r\n", "\n");
                let value = if leading_space {
                    format!(" {value}")
                } else {
                    value
                };
                let mut data = line(&name)?;
                data.extend(nul(&value)?);
                if let Some(step) = c.step(b'L', &data, NR_HEADER).await? {
                    return Ok(step);
                }
            }
        }
        if c.wants(NO_EOH) {
            if let Some(step) = c.step(b'N', &[], NR_EOH).await? {
                return Ok(step);
            }
        }
        if c.wants(NO_BODY) {
            let mut tail = match &draft.tail {
                Some(tail) => Some(
                    crate::spooled::Reader::open(tail)
                        .await
                        .map_err(|e| e.to_string())?,
                ),
                None => None,
            };
            let mut in_memory = draft.message[draft.body_offset()..].chunks(CHUNK);
            loop {
                let chunk = match in_memory.next() {
                    Some(chunk) => chunk,
                    None => match tail.as_mut() {
                        Some(reader) => {
                            match reader.next(CHUNK).await.map_err(|e| e.to_string())? {
                                Some(chunk) => chunk,
                                None => break,
                            }
                        }
                        None => break,
                    },
                };
                c.send(b'B', chunk).await?;
                if c.protocol & NR_BODY != 0 {
                    continue;
                }
                match c.answer(&mut Vec::new()).await? {
                    Answer::Continue => {}
                    Answer::Skip => break,
                    other => return Ok(final_step(other, Vec::new(), None)),
                }
            }
        }
        c.send(b'E', &[]).await?;
        let mut changes = Vec::new();
        let mut quarantine = None;
        let answer = loop {
            match c.modification(&mut changes, &mut quarantine).await? {
                Some(answer) => break answer,
                None => continue,
            }
        };
        Ok(final_step(answer, changes, quarantine))
    }
}

/// The pipeline's step for the milter's last answer, with the changes it asked for.
fn final_step(answer: Answer, changes: Vec<Change>, quarantine: Option<String>) -> Step {
    match answer {
        Answer::Refuse(reply) => Step::Refuse(reply),
        Answer::Discard => Step::Discard("the milter discarded it".into()),
        Answer::Continue | Answer::Accept | Answer::Skip => match quarantine {
            Some(reason) => Step::Quarantine(reason),
            None => Step::Continue(changes),
        },
    }
}

impl Conversation {
    /// Whether the milter wants the step that `off` (an SMFIP_NO* flag) leaves out.
    fn wants(&self, off: u32) -> bool {
        self.protocol & off == 0
    }

    async fn negotiate(&mut self) -> Result<(), String> {
        let mut data = Vec::with_capacity(12);
        for word in [VERSION, ACTIONS, PROTOCOL] {
            data.extend_from_slice(&word.to_be_bytes());
        }
        self.send(b'O', &data).await?;
        let (command, data) = self.receive().await?;
        if command != b'O' || data.len() < 12 {
            return Err(format!(
                "answered negotiation with {:?}",
                char::from(command)
            ));
        }
        let word = |i: usize| u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        if word(0) < 2 {
            return Err(format!("speaks milter protocol version {}", word(0)));
        }
        self.protocol = word(8) & PROTOCOL;
        Ok(())
    }

    async fn macros(&mut self, step: u8, macros: &[(&str, String)]) -> Result<(), String> {
        let mut data = vec![step];
        for (name, value) in macros {
            data.extend(line(name)?);
            data.extend(line(value)?);
        }
        self.send(b'D', &data).await
    }

    /// Sends a step and, unless `no_reply` was negotiated, reads the answer: `None` to go
    /// on, or the step that ends the conversation.
    async fn step(
        &mut self,
        command: u8,
        data: &[u8],
        no_reply: u32,
    ) -> Result<Option<Step>, String> {
        self.send(command, data).await?;
        if self.protocol & no_reply != 0 {
            return Ok(None);
        }
        match self.answer(&mut Vec::new()).await? {
            Answer::Continue | Answer::Skip => Ok(None),
            other => Ok(Some(final_step(other, Vec::new(), None))),
        }
    }

    /// Reads until an answer that is not progress.
    async fn answer(&mut self, changes: &mut Vec<Change>) -> Result<Answer, String> {
        let mut quarantine = None;
        loop {
            if let Some(answer) = self.modification(changes, &mut quarantine).await? {
                return Ok(answer);
            }
        }
    }

    /// Reads one packet: `Some(answer)` for a final one, `None` after a modification or
    /// progress.
    async fn modification(
        &mut self,
        changes: &mut Vec<Change>,
        quarantine: &mut Option<String>,
    ) -> Result<Option<Answer>, String> {
        let (command, data) = self.receive().await?;
        let mut fields = Fields(&data);
        let answer = match command {
            b'c' => Answer::Continue,
            b'a' => Answer::Accept,
            b'r' => Answer::Refuse(Reply::content_rejected(
                "Message rejected by the content filter",
            )),
            b't' => Answer::Refuse(Reply::content_deferred(
                "Content filter asked to try again later",
            )),
            b'd' => Answer::Discard,
            b's' => Answer::Skip,
            b'y' => {
                let text = fields.string()?;
                let code = text
                    .get(..3)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| format!("sent a reply without a code: {text:?}"))?;
                let reply = Reply::from_scanner(code, text.get(3..).unwrap_or_default())
                    .ok_or_else(|| format!("sent a reply that is not 4xx or 5xx: {text:?}"))?;
                Answer::Refuse(reply)
            }
            b'p' => return Ok(None),
            b'h' => {
                changes.push(Change::AddHeader {
                    name: fields.string()?,
                    value: self.header_value(fields.string()?),
                });
                return Ok(None);
            }
            b'i' | b'm' => {
                let index = fields.word()? as usize;
                let name = fields.string()?;
                let value = self.header_value(fields.string()?);
                changes.push(match command {
                    b'i' => Change::InsertHeader { index, name, value },
                    _ => Change::ChangeHeader {
                        name,
                        occurrence: index.max(1),
                        value,
                    },
                });
                return Ok(None);
            }
            b'e' => {
                let sender = fields.string()?;
                let sender = sender.trim().trim_start_matches('<').trim_end_matches('>');
                changes.push(Change::ChangeSender(match sender {
                    "" => ReversePath::Null,
                    s => ReversePath::Address(address(s)?),
                }));
                return Ok(None);
            }
            b'+' | b'2' => {
                changes.push(Change::AddRecipient(address(&fields.string()?)?));
                return Ok(None);
            }
            b'-' => {
                changes.push(Change::DeleteRecipient(address(&fields.string()?)?));
                return Ok(None);
            }
            b'b' => {
                match changes.last_mut() {
                    Some(Change::ReplaceBody(body)) => body.extend_from_slice(&data),
                    _ => changes.push(Change::ReplaceBody(data.clone())),
                }
                return Ok(None);
            }
            b'q' => {
                let reason = fields.string()?;
                *quarantine = Some(match reason.trim() {
                    "" => "the milter asked for quarantine".to_owned(),
                    r => r.to_owned(),
                });
                return Ok(None);
            }
            other => {
                return Err(format!("sent an unknown answer {:?}", char::from(other)));
            }
        };
        Ok(Some(answer))
    }

    /// A header value from the milter: with a leading space negotiated, the one after the
    /// colon is the milter's to give; otherwise we add it.
    fn header_value(&self, value: String) -> String {
        match self.protocol & HEADER_LEADING_SPACE != 0 {
            true => value.strip_prefix(' ').map(str::to_owned).unwrap_or(value),
            false => value,
        }
    }

    async fn send(&mut self, command: u8, data: &[u8]) -> Result<(), String> {
        let len = u32::try_from(data.len() + 1).map_err(|_| "packet too long")?;
        let mut packet = Vec::with_capacity(data.len() + 5);
        packet.extend_from_slice(&len.to_be_bytes());
        packet.push(command);
        packet.extend_from_slice(data);
        self.stream
            .write_all(&packet)
            .await
            .map_err(|e| format!("sending to {}: {e}", self.endpoint))
    }

    async fn receive(&mut self) -> Result<(u8, Vec<u8>), String> {
        let failed = |e: std::io::Error| format!("reading from the milter: {e}");
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await.map_err(failed)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 || len > MAX_PACKET {
            return Err(format!("sent a packet of {len} octets"));
        }
        let mut packet = vec![0u8; len];
        self.stream.read_exact(&mut packet).await.map_err(failed)?;
        let command = packet.remove(0);
        Ok((command, packet))
    }
}

/// `text` and the NUL that ends it. A NUL inside would end the string early and shift every
/// field after it, so such a value is refused, never sent (or quietly changed). Header values
/// may hold line breaks (folding).
fn nul(text: &str) -> Result<Vec<u8>, String> {
    if text.contains('\0') {
        return Err("a value for the milter holds a NUL; not sent".into());
    }
    let mut out = Vec::with_capacity(text.len() + 1);
    out.extend_from_slice(text.as_bytes());
    out.push(0);
    Ok(out)
}

/// A one-line value (an address, a name, a macro) and its NUL: no CR, LF or NUL in it.
fn line(text: &str) -> Result<Vec<u8>, String> {
    backstop_types::text::one_line("a milter value", text).map_err(|e| e.to_string())?;
    nul(text)
}

fn address(text: &str) -> Result<Address, String> {
    let bare = text.trim().trim_start_matches('<').trim_end_matches('>');
    Address::parse(bare).map_err(|e| format!("sent a bad address {text:?}: {e}"))
}

/// The NUL-terminated strings and words of a packet, in order.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn string(&mut self) -> Result<String, String> {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        let text = String::from_utf8_lossy(&self.0[..end]).into_owned();
        self.0 = self.0.get(end + 1..).unwrap_or_default();
        Ok(text)
    }

    fn word(&mut self) -> Result<u32, String> {
        let bytes = self.0.get(..4).ok_or("a packet too short")?;
        let word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        self.0 = &self.0[4..];
        Ok(word)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_would_break_the_framing_are_refused() {
        assert_eq!(line("<a@b.example>"), Ok(b"<a@b.example>\0".to_vec()));
        assert!(line("<a@b>\r\nx").is_err());
        assert!(line("a\0b").is_err());
        // Header values may be folded, but never hold a NUL.
        assert_eq!(nul("a\n b"), Ok(b"a\n b\0".to_vec()));
        assert!(nul("a\0b").is_err());
    }
}
