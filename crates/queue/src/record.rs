//! On-disk records: a version octet, then length-prefixed fields.
//!
//! The queue entry record (envelope, per-recipient state, hold flag):
//! - version 1: the envelope alone (written by the first release); read with every recipient
//!   pending and due at arrival;
//! - version 2: the envelope as in version 1, then the hold flag and one state per recipient;
//! - version 3: version 2, then per recipient whether a DSN has reported its failure, and how
//!   many delay notices have been sent;
//! - version 4: version 3, then the size of the stored message, so that listing the queue
//!   (and planning memory for a delivery) never reads a body. Earlier versions read as size 0,
//!   "not known".
//!
//! Only the newest version is written; every older decoder stays, with a committed fixture, so
//! queues written by earlier releases keep working.

use std::net::IpAddr;

use backstop_types::quarantine::{Owner, Reason, ReasonKind};
use backstop_types::{
    Address, Attempt, AuthInfo, BodyType, ClientInfo, Domain, DsnParams, EnhancedStatus, Envelope,
    Notify, Orcpt, Recipient, RecipientState, RemoteReply, Ret, ReversePath, TlsInfo, TrustClass,
    UnixTime,
};

/// A record that cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("unknown record version {0}")]
    UnknownVersion(u8),
    #[error("record truncated")]
    Truncated,
    #[error("record field {0} is invalid")]
    Invalid(&'static str),
}

const ENTRY_V1: u8 = 1;
const ENTRY_V2: u8 = 2;
const ENTRY_V3: u8 = 3;
const ENTRY_V4: u8 = 4;

/// A message's record in the queue: its envelope, where each recipient stands, and whether an
/// administrator holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub envelope: Envelope,
    /// One per recipient of the envelope, in the same order.
    pub states: Vec<RecipientState>,
    pub held: bool,
    /// One per recipient: a DSN has reported this recipient's failure to the sender, so the
    /// failure needs no quarantine.
    pub reported: Vec<bool>,
    /// How many of the configured delay notices have been sent.
    pub delay_notices: u32,
    /// Octets of the stored message; 0 when not known (a record written before version 4).
    pub size: u64,
}

impl Entry {
    /// A newly accepted message of `size` octets: every recipient pending, due at arrival.
    pub fn new(envelope: Envelope, size: u64) -> Entry {
        let states = vec![
            RecipientState::Pending {
                attempts: 0,
                next_attempt: envelope.arrival,
                last: None,
            };
            envelope.recipients.len()
        ];
        let reported = vec![false; envelope.recipients.len()];
        Entry {
            envelope,
            states,
            held: false,
            reported,
            delay_notices: 0,
            size,
        }
    }
}

pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(256));
    w.u8(ENTRY_V4);
    write_envelope(&mut w, &entry.envelope);
    w.u8(u8::from(entry.held));
    w.u32(entry.states.len() as u32);
    for state in &entry.states {
        match state {
            RecipientState::Pending {
                attempts,
                next_attempt,
                last,
            } => {
                w.u8(0);
                w.u32(*attempts);
                w.u64(next_attempt.0);
                match last {
                    None => w.u8(0),
                    Some(a) => {
                        w.u8(1);
                        write_attempt(&mut w, a);
                    }
                }
            }
            RecipientState::Delivered { at, last } => {
                w.u8(1);
                w.u64(at.0);
                write_attempt(&mut w, last);
            }
            RecipientState::Failed { at, last } => {
                w.u8(2);
                w.u64(at.0);
                write_attempt(&mut w, last);
            }
        }
    }
    w.u32(entry.reported.len() as u32);
    for reported in &entry.reported {
        w.u8(u8::from(*reported));
    }
    w.u32(entry.delay_notices);
    w.u64(entry.size);
    w.0
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, RecordError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    if !matches!(version, ENTRY_V1 | ENTRY_V2 | ENTRY_V3 | ENTRY_V4) {
        return Err(RecordError::UnknownVersion(version));
    }
    let envelope = read_envelope(&mut r)?;
    if version == ENTRY_V1 {
        return Ok(Entry::new(envelope, 0));
    }
    let held = r.u8()? != 0;
    let count = r.u32()? as usize;
    if count != envelope.recipients.len() {
        return Err(RecordError::Invalid("recipient state count"));
    }
    let mut states = Vec::with_capacity(count);
    for _ in 0..count {
        states.push(match r.u8()? {
            0 => RecipientState::Pending {
                attempts: r.u32()?,
                next_attempt: UnixTime(r.u64()?),
                last: match r.u8()? {
                    0 => None,
                    _ => Some(read_attempt(&mut r)?),
                },
            },
            1 => RecipientState::Delivered {
                at: UnixTime(r.u64()?),
                last: read_attempt(&mut r)?,
            },
            2 => RecipientState::Failed {
                at: UnixTime(r.u64()?),
                last: read_attempt(&mut r)?,
            },
            _ => return Err(RecordError::Invalid("recipient state")),
        });
    }
    let (reported, delay_notices) = if version >= ENTRY_V3 {
        let n = r.u32()? as usize;
        if n != count {
            return Err(RecordError::Invalid("reported count"));
        }
        let mut reported = Vec::with_capacity(n);
        for _ in 0..n {
            reported.push(r.u8()? != 0);
        }
        (reported, r.u32()?)
    } else {
        (vec![false; count], 0)
    };
    let size = match version {
        ENTRY_V4 => r.u64()?,
        _ => 0,
    };
    if !r.0.is_empty() {
        return Err(RecordError::Invalid("trailing bytes"));
    }
    Ok(Entry {
        envelope,
        states,
        held,
        reported,
        delay_notices,
        size,
    })
}

const QUARANTINE_V1: u8 = 1;
const QUARANTINE_V2: u8 = 2;

/// A quarantined message's record.
///
/// - version 1: the envelope, a free-text reason and the time; read as a reason of the kind
///   its text names, every recipient the administrator's, size 0 ("not known");
/// - version 2: the envelope, a [`Reason`] (kind, scanner, check, detail), the time, the
///   message's size, and per recipient its [`Owner`], its [`HeldState`] and whether a digest
///   has listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineRecord {
    pub envelope: Envelope,
    pub reason: Reason,
    pub at: UnixTime,
    /// Octets of the stored message; 0 when not known (a version 1 record).
    pub size: u64,
    /// One per recipient of the envelope, in the same order.
    pub held: Vec<Held>,
}

/// One recipient's copy of a quarantined message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub owner: Owner,
    pub state: HeldState,
    /// A digest has listed it to its owner.
    pub notified: bool,
}

/// Where one recipient's copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldState {
    Held,
    /// Released at this time: a copy went into the queue for this recipient.
    Released(UnixTime),
    /// Deleted by its owner at this time.
    Deleted(UnixTime),
}

impl QuarantineRecord {
    /// A new record: every recipient held, owned as `owners` says (the administrator's where
    /// it says nothing).
    pub fn new(
        envelope: Envelope,
        reason: Reason,
        at: UnixTime,
        size: u64,
        owners: &[Owner],
    ) -> QuarantineRecord {
        let held = (0..envelope.recipients.len())
            .map(|i| Held {
                owner: owners.get(i).copied().unwrap_or(Owner::Admin),
                state: HeldState::Held,
                notified: false,
            })
            .collect();
        QuarantineRecord {
            envelope,
            reason,
            at,
            size,
            held,
        }
    }

    /// The recipients still held, with their index.
    pub fn still_held(&self) -> impl Iterator<Item = (usize, &Recipient, &Held)> {
        self.envelope
            .recipients
            .iter()
            .zip(&self.held)
            .enumerate()
            .filter(|(_, (_, h))| h.state == HeldState::Held)
            .map(|(i, (r, h))| (i, r, h))
    }
}

pub fn encode_quarantine(q: &QuarantineRecord) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(256));
    w.u8(QUARANTINE_V2);
    write_envelope(&mut w, &q.envelope);
    w.u8(q.reason.kind.code());
    w.str(&q.reason.scanner);
    w.str(&q.reason.check);
    w.str(&q.reason.detail);
    w.u64(q.at.0);
    w.u64(q.size);
    w.u32(q.held.len() as u32);
    for held in &q.held {
        w.u8(match held.owner {
            Owner::Recipient => 0,
            Owner::Admin => 1,
        });
        match held.state {
            HeldState::Held => {
                w.u8(0);
                w.u64(0);
            }
            HeldState::Released(at) => {
                w.u8(1);
                w.u64(at.0);
            }
            HeldState::Deleted(at) => {
                w.u8(2);
                w.u64(at.0);
            }
        }
        w.u8(u8::from(held.notified));
    }
    w.0
}

pub fn decode_quarantine(bytes: &[u8]) -> Result<QuarantineRecord, RecordError> {
    let mut r = Reader(bytes);
    let version = r.u8()?;
    let envelope = read_envelope(&mut r)?;
    let record = match version {
        QUARANTINE_V1 => {
            let text = r.str()?;
            let at = UnixTime(r.u64()?);
            let count = envelope.recipients.len();
            QuarantineRecord::new(
                envelope,
                reason_of_v1(text),
                at,
                0,
                &vec![Owner::Admin; count],
            )
        }
        QUARANTINE_V2 => {
            let kind = ReasonKind::from_code(r.u8()?).ok_or(RecordError::Invalid("reason kind"))?;
            let reason = Reason {
                kind,
                scanner: r.str()?,
                check: r.str()?,
                detail: r.str()?,
            };
            let at = UnixTime(r.u64()?);
            let size = r.u64()?;
            let count = r.u32()? as usize;
            if count != envelope.recipients.len() {
                return Err(RecordError::Invalid("held count"));
            }
            let mut held = Vec::with_capacity(count);
            for _ in 0..count {
                let owner = match r.u8()? {
                    0 => Owner::Recipient,
                    1 => Owner::Admin,
                    _ => return Err(RecordError::Invalid("owner")),
                };
                let (state, at) = (r.u8()?, UnixTime(r.u64()?));
                let state = match state {
                    0 => HeldState::Held,
                    1 => HeldState::Released(at),
                    2 => HeldState::Deleted(at),
                    _ => return Err(RecordError::Invalid("held state")),
                };
                let notified = r.u8()? != 0;
                held.push(Held {
                    owner,
                    state,
                    notified,
                });
            }
            QuarantineRecord {
                envelope,
                reason,
                at,
                size,
                held,
            }
        }
        v => return Err(RecordError::UnknownVersion(v)),
    };
    if !r.0.is_empty() {
        return Err(RecordError::Invalid("trailing bytes"));
    }
    Ok(record)
}

/// A version 1 record's free-text reason, as the kind its text shows: the delivery failures
/// the scheduler wrote, the DMARC verdicts, and content verdicts for the rest.
fn reason_of_v1(text: String) -> Reason {
    if text.starts_with("delivery failed:") {
        Reason::undeliverable(text)
    } else if text.starts_with("DMARC ") {
        Reason::dmarc(text)
    } else {
        Reason::content("", "", text)
    }
}

fn write_attempt(w: &mut Writer, a: &Attempt) {
    w.opt_str(a.remote_host.as_deref());
    w.u32(u32::from(a.reply.code));
    match a.reply.status {
        None => w.u8(0),
        Some(EnhancedStatus(class, subject, detail)) => {
            w.u8(1);
            w.u8(class);
            w.u32(u32::from(subject));
            w.u32(u32::from(detail));
        }
    }
    w.str(&a.reply.text);
}

fn read_attempt(r: &mut Reader<'_>) -> Result<Attempt, RecordError> {
    let remote_host = r.opt_str()?;
    let code = u16::try_from(r.u32()?).map_err(|_| RecordError::Invalid("reply code"))?;
    let status = match r.u8()? {
        0 => None,
        _ => {
            let class = r.u8()?;
            let subject = u16::try_from(r.u32()?).map_err(|_| RecordError::Invalid("status"))?;
            let detail = u16::try_from(r.u32()?).map_err(|_| RecordError::Invalid("status"))?;
            Some(EnhancedStatus(class, subject, detail))
        }
    };
    Ok(Attempt {
        remote_host,
        reply: RemoteReply {
            code,
            status,
            text: r.str()?,
        },
    })
}

/// The envelope fields, the same in versions 1 and 2.
fn write_envelope(w: &mut Writer, e: &Envelope) {
    w.opt_str(e.sender.address().map(|a| a.to_string()).as_deref());
    w.u32(e.recipients.len() as u32);
    for r in &e.recipients {
        w.str(&r.address.to_string());
        match r.notify {
            Notify::Default => w.u8(0),
            Notify::Never => w.u8(1),
            Notify::On {
                success,
                failure,
                delay,
            } => w.u8(2 | u8::from(success) << 2 | u8::from(failure) << 3 | u8::from(delay) << 4),
        }
        w.opt_str(r.orcpt.as_ref().map(Orcpt::to_stored).as_deref());
    }
    w.u8(match e.dsn.ret {
        None => 0,
        Some(Ret::Full) => 1,
        Some(Ret::Headers) => 2,
    });
    w.opt_str(e.dsn.envid.as_deref());
    w.u8(match e.body_type {
        BodyType::SevenBit => 0,
        BodyType::EightBitMime => 1,
        BodyType::BinaryMime => 2,
    });
    w.u8(u8::from(e.smtputf8));
    w.str(&e.client.ip.to_string());
    w.str(&e.client.helo);
    w.opt_str(e.client.ptr.as_ref().map(Domain::as_str));
    match &e.client.tls {
        None => w.u8(0),
        Some(tls) => {
            w.u8(1);
            w.str(&tls.version);
            w.str(&tls.cipher);
        }
    }
    match &e.client.auth {
        None => w.u8(0),
        Some(auth) => {
            w.u8(1);
            w.str(&auth.user);
            w.str(&auth.mechanism);
        }
    }
    w.str(&e.client.listener);
    w.u64(e.arrival.0);
    match &e.trust {
        TrustClass::Unverified => w.u8(0),
        TrustClass::LocalNetwork => w.u8(1),
        TrustClass::Authenticated { user } => {
            w.u8(2);
            w.str(user);
        }
    }
}

fn read_envelope(r: &mut Reader<'_>) -> Result<Envelope, RecordError> {
    let sender = match r.opt_str()? {
        None => ReversePath::Null,
        Some(s) => ReversePath::Address(address(&s, "sender")?),
    };
    let count = r.u32()? as usize;
    let mut recipients = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let address = address(&r.str()?, "recipient")?;
        let notify = match r.u8()? {
            0 => Notify::Default,
            1 => Notify::Never,
            b if b & 3 == 2 => Notify::On {
                success: b & 4 != 0,
                failure: b & 8 != 0,
                delay: b & 16 != 0,
            },
            _ => return Err(RecordError::Invalid("notify")),
        };
        // An ORCPT that does not pass today's checks (earlier versions stored what the
        // client sent, control characters and all) is dropped, never passed on.
        let orcpt = r.opt_str()?.and_then(|o| match Orcpt::from_stored(&o) {
            Ok(orcpt) => Some(orcpt),
            Err(e) => {
                tracing::warn!(error = %e, "stored ORCPT dropped");
                None
            }
        });
        recipients.push(Recipient {
            address,
            notify,
            orcpt,
        });
    }
    let ret = match r.u8()? {
        0 => None,
        1 => Some(Ret::Full),
        2 => Some(Ret::Headers),
        _ => return Err(RecordError::Invalid("ret")),
    };
    let envid = r.opt_str()?;
    let body_type = match r.u8()? {
        0 => BodyType::SevenBit,
        1 => BodyType::EightBitMime,
        2 => BodyType::BinaryMime,
        _ => return Err(RecordError::Invalid("body type")),
    };
    let smtputf8 = r.u8()? != 0;
    let ip: IpAddr = r.str()?.parse().map_err(|_| RecordError::Invalid("ip"))?;
    let helo = r.str()?;
    let ptr = match r.opt_str()? {
        None => None,
        Some(s) => Some(Domain::parse(&s).map_err(|_| RecordError::Invalid("ptr"))?),
    };
    let tls = match r.u8()? {
        0 => None,
        _ => Some(TlsInfo {
            version: r.str()?,
            cipher: r.str()?,
        }),
    };
    let auth = match r.u8()? {
        0 => None,
        _ => Some(AuthInfo {
            user: r.str()?,
            mechanism: r.str()?,
        }),
    };
    let listener = r.str()?;
    let arrival = UnixTime(r.u64()?);
    let trust = match r.u8()? {
        0 => TrustClass::Unverified,
        1 => TrustClass::LocalNetwork,
        2 => TrustClass::Authenticated { user: r.str()? },
        _ => return Err(RecordError::Invalid("trust")),
    };
    Ok(Envelope {
        sender,
        recipients,
        dsn: DsnParams { ret, envid },
        body_type,
        smtputf8,
        client: ClientInfo {
            ip,
            helo,
            ptr,
            tls,
            auth,
            listener,
        },
        arrival,
        trust,
    })
}

fn address(s: &str, field: &'static str) -> Result<Address, RecordError> {
    Address::parse(s).map_err(|_| RecordError::Invalid(field))
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], RecordError> {
        if self.0.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn str(&mut self) -> Result<String, RecordError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| RecordError::Invalid("utf-8"))
    }
    fn opt_str(&mut self) -> Result<Option<String>, RecordError> {
        match self.u8()? {
            0 => Ok(None),
            _ => self.str().map(Some),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
