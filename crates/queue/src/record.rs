//! On-disk records: a version octet, then length-prefixed fields.
//!
//! Version 1 of the envelope record is the only one so far. A later version gets a new decoder
//! beside this one; the old decoder stays so existing queues keep working.

use std::net::IpAddr;

use backstop_types::{
    Address, AuthInfo, BodyType, ClientInfo, Domain, DsnParams, Envelope, Notify, Recipient, Ret,
    ReversePath, TlsInfo, TrustClass, UnixTime,
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

const ENVELOPE_V1: u8 = 1;

pub fn encode_envelope(e: &Envelope) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(256));
    w.u8(ENVELOPE_V1);
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
        w.opt_str(r.orcpt.as_deref());
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
    w.0
}

pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, RecordError> {
    let mut r = Reader(bytes);
    match r.u8()? {
        ENVELOPE_V1 => {}
        v => return Err(RecordError::UnknownVersion(v)),
    }
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
        let orcpt = r.opt_str()?;
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
