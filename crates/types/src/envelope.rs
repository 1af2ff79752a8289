//! The envelope of an accepted message: everything the queue, the delivery agent and the DSN
//! generator need to know about how and from whom a message arrived.

use std::net::IpAddr;

use crate::{Address, Domain, ReversePath};

/// Seconds since 1970-01-01 UTC. The clock is read by the caller and passed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub u64);

/// How far the sender of a message can be trusted to be who the return path says.
///
/// Recorded at acceptance. The bounce gate (the DSN issue) sends reports only to senders we can
/// verify: authenticated submitters here, and return paths carrying our own BATV tag, which is a
/// property of the address checked when the bounce would be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustClass {
    /// The client logged in with SMTP AUTH as this user.
    Authenticated { user: String },
    /// The client connected from a network the config names as local submitters.
    LocalNetwork,
    /// Anyone else: the return path may be forged.
    Unverified,
}

/// RFC 3461 NOTIFY for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notify {
    /// No NOTIFY parameter: failures (and, at our choice, delays) are reported.
    Default,
    /// NOTIFY=NEVER.
    Never,
    /// NOTIFY with one or more of SUCCESS, FAILURE, DELAY.
    On {
        success: bool,
        failure: bool,
        delay: bool,
    },
}

/// RFC 3461 RET: how much of the message a DSN returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Headers,
}

/// The message-level DSN parameters of `MAIL FROM` (RFC 3461).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnParams {
    /// RET, when the client gave one.
    pub ret: Option<Ret>,
    /// ENVID, decoded from xtext, when the client gave one.
    pub envid: Option<String>,
}

/// The body type declared at `MAIL FROM` (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// One recipient as given in `RCPT TO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: Address,
    pub notify: Notify,
    /// ORCPT, checked, when the client gave one (or the address it gave, when an alias
    /// expanded it).
    pub orcpt: Option<crate::Orcpt>,
}

/// The TLS session of a connection, for the `Received:` header and the envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`
    pub cipher: String,
}

/// A successful SMTP AUTH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthInfo {
    pub user: String,
    /// `PLAIN` or `LOGIN`.
    pub mechanism: String,
}

/// Who the client was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub ip: IpAddr,
    /// The name given in HELO/EHLO, as given.
    pub helo: String,
    /// The reverse DNS name of `ip`, when one was looked up and confirmed.
    pub ptr: Option<Domain>,
    pub tls: Option<TlsInfo>,
    pub auth: Option<AuthInfo>,
    /// The name of the listener the message came in on (e.g. `mx`, `submission`).
    pub listener: String,
}

/// Everything recorded with an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub sender: ReversePath,
    pub recipients: Vec<Recipient>,
    pub dsn: DsnParams,
    pub body_type: BodyType,
    pub smtputf8: bool,
    pub client: ClientInfo,
    pub arrival: UnixTime,
    pub trust: TrustClass,
}

impl Envelope {
    /// A message this server writes itself (a delivery report, a quarantine digest): from the
    /// null sender, to one recipient about whom no notice is asked (NOTIFY=NEVER), from
    /// localhost as `listener`, trusted as the local network. `ascii`: whether its body is.
    pub fn own_notice(
        to: &Address,
        hostname: &str,
        listener: &str,
        now: UnixTime,
        ascii: bool,
    ) -> Envelope {
        Envelope {
            sender: ReversePath::Null,
            recipients: vec![Recipient {
                address: to.clone(),
                notify: Notify::Never,
                orcpt: None,
            }],
            dsn: DsnParams {
                ret: None,
                envid: None,
            },
            body_type: if ascii {
                BodyType::SevenBit
            } else {
                BodyType::EightBitMime
            },
            smtputf8: !to.is_ascii(),
            client: ClientInfo {
                ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                helo: hostname.to_owned(),
                ptr: None,
                tls: None,
                auth: None,
                listener: listener.to_owned(),
            },
            arrival: now,
            trust: TrustClass::LocalNetwork,
        }
    }
}

impl UnixTime {
    /// The date in RFC 5322 form in UTC, e.g. `Sun, 22 Nov 2026 17:20:00 +0000`.
    pub fn to_rfc5322(self) -> String {
        const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let days = self.0 / 86_400;
        let secs = self.0 % 86_400;
        let (year, month, day) = civil_from_days(days);
        format!(
            "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
            DAYS[(days % 7) as usize],
            MONTHS[(month - 1) as usize],
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

impl UnixTime {
    /// The time in RFC 3339 form in UTC, to the second, e.g. `2026-11-22T17:19:59Z`: how log
    /// lines begin.
    pub fn to_rfc3339(self) -> String {
        let secs = self.0 % 86_400;
        let (year, month, day) = civil_from_days(self.0 / 86_400);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

/// Year, month (1-12) and day (1-31) of a day count since 1970-01-01, for dates from 1970 on.
/// Howard Hinnant's `civil_from_days`, restricted to non-negative input.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5322_dates() {
        assert_eq!(UnixTime(0).to_rfc5322(), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            UnixTime(951_782_400).to_rfc5322(),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(
            UnixTime(1_795_367_999).to_rfc5322(),
            "Sun, 22 Nov 2026 17:19:59 +0000"
        );
        assert_eq!(UnixTime(0).to_rfc3339(), "1970-01-01T00:00:00Z");
        assert_eq!(UnixTime(951_782_400).to_rfc3339(), "2000-02-29T00:00:00Z");
        assert_eq!(UnixTime(1_795_367_999).to_rfc3339(), "2026-11-22T17:19:59Z");
    }
}
