//! Why a message is in quarantine, and who may act on it.
//!
//! A [`Reason`] has a [`ReasonKind`]: a content verdict (with the scanner and the check that
//! gave it), a DMARC `p=quarantine` policy, a delivery failure whose report was suppressed (the
//! sender could not be verified: reporting to it could be backscatter), or an administrator's
//! hold. Each recipient of a quarantined message has an [`Owner`]: the recipient itself for
//! an inbound verdict on a local mailbox, the administrator for everything else.

use std::fmt;

/// The kind of a quarantine reason. The numbers are the record's encoding: never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReasonKind {
    /// A content check's verdict: a rule, a milter, rspamd, clamd or the RFC 5322 check.
    Content,
    /// The sender's domain publishes DMARC `p=quarantine` and the message failed DMARC.
    Dmarc,
    /// Delivery failed after acceptance and no report could go to the sender (it is not our
    /// user and carries no BATV tag of ours): the failure is kept here instead of a bounce.
    Undeliverable,
    /// An administrator moved the message here.
    Hold,
}

impl ReasonKind {
    pub const ALL: [ReasonKind; 4] = [
        ReasonKind::Content,
        ReasonKind::Dmarc,
        ReasonKind::Undeliverable,
        ReasonKind::Hold,
    ];

    /// The name in configs, metrics, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonKind::Content => "content",
            ReasonKind::Dmarc => "dmarc",
            ReasonKind::Undeliverable => "undeliverable",
            ReasonKind::Hold => "hold",
        }
    }

    pub fn parse(name: &str) -> Option<ReasonKind> {
        ReasonKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn code(self) -> u8 {
        match self {
            ReasonKind::Content => 0,
            ReasonKind::Dmarc => 1,
            ReasonKind::Undeliverable => 2,
            ReasonKind::Hold => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<ReasonKind> {
        ReasonKind::ALL.into_iter().find(|k| k.code() == code)
    }
}

impl fmt::Display for ReasonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message is in quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub kind: ReasonKind,
    /// What decided: the scanner's kind for a content verdict (`rule`, `milter`, `rspamd`,
    /// `clamd`, `rfc5322`), `dmarc`, the remote host for a failed delivery, `admin` for a hold.
    pub scanner: String,
    /// Which check of that scanner: the configured check's name (`rule no-exe`,
    /// `clamd 127.0.0.1:3310`); empty when the scanner says it all.
    pub check: String,
    /// What it said: the rule's finding, the virus name, the remote reply.
    pub detail: String,
}

impl Reason {
    pub fn content(scanner: &str, check: &str, detail: impl Into<String>) -> Reason {
        Reason {
            kind: ReasonKind::Content,
            scanner: scanner.to_owned(),
            check: check.to_owned(),
            detail: detail.into(),
        }
    }

    pub fn dmarc(detail: impl Into<String>) -> Reason {
        Reason {
            kind: ReasonKind::Dmarc,
            scanner: "dmarc".to_owned(),
            check: String::new(),
            detail: detail.into(),
        }
    }

    pub fn undeliverable(detail: impl Into<String>) -> Reason {
        Reason {
            kind: ReasonKind::Undeliverable,
            scanner: "delivery".to_owned(),
            check: String::new(),
            detail: detail.into(),
        }
    }

    pub fn hold(detail: impl Into<String>) -> Reason {
        Reason {
            kind: ReasonKind::Hold,
            scanner: "admin".to_owned(),
            check: String::new(),
            detail: detail.into(),
        }
    }

    /// A virus scanner's verdict: nobody but the administrator releases such a message.
    pub fn is_virus(&self) -> bool {
        self.kind == ReasonKind::Content && self.scanner == "clamd"
    }

    /// Whether a recipient who owns its copy may release it: content verdicts but a virus, and
    /// DMARC. A failed delivery and a hold are the administrator's alone.
    pub fn recipient_may_release(&self) -> bool {
        matches!(self.kind, ReasonKind::Content | ReasonKind::Dmarc) && !self.is_virus()
    }

    /// Whether a recipient's allow-list lifts this hold: a content check's verdict on what
    /// the message says (a rule, rspamd, a milter, the RFC 5322 check), never a virus and
    /// never a verdict on who sent it (SPF, reverse DNS, DMARC), which the envelope sender
    /// an allow-list is keyed on could forge its way past.
    pub fn allow_list_lifts(&self) -> bool {
        self.kind == ReasonKind::Content
            && !matches!(self.scanner.as_str(), "clamd" | "spf" | "iprev")
    }

    /// Who owns a recipient's copy of a message quarantined for this reason: the recipient
    /// when it is a local mailbox and the verdict came in with the message; the administrator
    /// otherwise, and always for a suppressed report (the sender could not be verified: any
    /// notice about it could be backscatter) and a hold.
    pub fn owner(&self, recipient_is_local: bool) -> Owner {
        match self.kind {
            ReasonKind::Content | ReasonKind::Dmarc if recipient_is_local => Owner::Recipient,
            _ => Owner::Admin,
        }
    }
}

/// As log lines and the CLI have shown reasons: `check: detail`.
impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by = match (&self.check, &self.scanner) {
            (check, _) if !check.is_empty() => check,
            (_, scanner) if !scanner.is_empty() => scanner,
            _ => return f.write_str(&self.detail),
        };
        match self.kind {
            ReasonKind::Content => write!(f, "{by}: {}", self.detail),
            _ => f.write_str(&self.detail),
        }
    }
}

/// Who may act on one recipient's copy of a quarantined message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// The recipient (a local mailbox): listed in its digest, released by its link.
    Recipient,
    /// The administrator alone.
    Admin,
}

impl Owner {
    pub fn as_str(self) -> &'static str {
        match self {
            Owner::Recipient => "recipient",
            Owner::Admin => "admin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppressed_reports_and_holds_are_the_administrators_alone() {
        let undeliverable = Reason::undeliverable("550 5.1.1 no such user");
        assert_eq!(undeliverable.owner(true), Owner::Admin);
        assert!(!undeliverable.recipient_may_release());
        assert_eq!(Reason::hold("x").owner(true), Owner::Admin);
        let spam = Reason::content("rspamd", "rspamd", "score 12");
        assert_eq!(spam.owner(true), Owner::Recipient);
        assert_eq!(spam.owner(false), Owner::Admin);
        assert!(spam.recipient_may_release());
        let virus = Reason::content("clamd", "clamd 127.0.0.1:3310", "Eicar-Test-Signature");
        assert_eq!(virus.owner(true), Owner::Recipient);
        assert!(!virus.recipient_may_release());
        assert!(Reason::dmarc("example.com").recipient_may_release());
        assert!(spam.allow_list_lifts());
        assert!(!virus.allow_list_lifts());
        assert!(!Reason::dmarc("example.com").allow_list_lifts());
        assert!(!Reason::content("spf", "", "SPF fail").allow_list_lifts());
        assert!(!undeliverable.allow_list_lifts());
    }

    #[test]
    fn kinds_round_trip_by_name_and_code() {
        for kind in ReasonKind::ALL {
            assert_eq!(ReasonKind::parse(kind.as_str()), Some(kind));
            assert_eq!(ReasonKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(ReasonKind::parse("spam"), None);
        assert_eq!(ReasonKind::from_code(9), None);
    }
}
