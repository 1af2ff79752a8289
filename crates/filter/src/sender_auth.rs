//! Sender authentication at the end of DATA, with mail-auth: forward-confirmed reverse DNS of
//! the client (iprev), SPF (the MAIL FROM identity, or the HELO name for a null sender), DKIM
//! signatures, ARC seals, and DMARC over SPF and DKIM, decided together so that an aligned
//! DKIM signature can make DMARC pass where SPF failed (a forwarded message). SPF can also be
//! decided early, at MAIL FROM ([`SenderAuth::check_spf`]).
//!
//! The defaults: DMARC fail under `p=reject` is refused (550 5.7.1), under `p=quarantine` the
//! message is accepted into quarantine, an SPF `fail` without a DMARC pass is refused
//! (550 5.7.23), and a DNS failure that leaves a result unknown is a 451 so the client retries.
//! A DKIM key that cannot be fetched for now counts as such a failure when it could have
//! changed the decision. A DMARC fail is forgiven when a trusted forwarder's valid ARC chain
//! says DMARC passed when the message reached it (a mailing list that rewrote the message).
//! Accepted mail gets an `Authentication-Results:` header (RFC 8601) with every result.

use std::net::IpAddr;

use backstop_types::quarantine::Reason;
use backstop_types::ReversePath;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DmarcResult, IprevResult, MessageAuthenticator,
    SpfResult,
};

/// What to do with a message a check condemns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Reject,
    Quarantine,
    Accept,
}

/// The configured action per result.
#[derive(Debug, Clone)]
pub struct Actions {
    /// DMARC fails and the domain publishes `p=reject`.
    pub dmarc_reject: Action,
    /// DMARC fails and the domain publishes `p=quarantine`.
    pub dmarc_quarantine: Action,
    /// SPF says `fail` and DMARC does not pass.
    pub spf_fail: Action,
    /// A DNS failure left SPF or DMARC unknown: 451 (true) or accept (false).
    pub tempfail_on_dns_error: bool,
    /// The client's address has no PTR name that resolves back to it (FCrDNS, "iprev").
    pub iprev_fail: Action,
    /// Refuse an SPF `fail` at MAIL FROM already, without waiting for DKIM and DMARC.
    pub spf_at_mail: bool,
    /// The ARC sealing domains (`d=` of the newest ARC-Seal) whose `dmarc=pass` is trusted.
    pub trusted_arc_sealers: Vec<String>,
}

impl Default for Actions {
    fn default() -> Actions {
        Actions {
            dmarc_reject: Action::Reject,
            dmarc_quarantine: Action::Quarantine,
            spf_fail: Action::Reject,
            tempfail_on_dns_error: true,
            // As Postfix: reverse DNS is recorded, not required (much legitimate mail lacks it).
            iprev_fail: Action::Accept,
            spf_at_mail: false,
            trusted_arc_sealers: Vec::new(),
        }
    }
}

/// Why a message is refused, for the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The From domain's DMARC policy rejects it.
    Dmarc { domain: String },
    /// The envelope sender's (or HELO name's) SPF record says the client may not send for it.
    Spf { domain: String },
    /// The client's address fails forward-confirmed reverse DNS.
    Iprev { ip: IpAddr },
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accept,
    Refuse(Refusal),
    Quarantine(backstop_types::quarantine::Reason),
    /// A lookup failed: try again later.
    TempFail,
}

impl std::fmt::Display for Outcome {
    /// As the log shows it: `accept`, `refuse dmarc example.com`, `quarantine <why>`,
    /// `tempfail`; the domain and reason escaped (they come from the message).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use backstop_types::text::Escaped;
        match self {
            Outcome::Accept => f.write_str("accept"),
            Outcome::Refuse(Refusal::Dmarc { domain }) => {
                write!(f, "refuse dmarc {}", Escaped(domain))
            }
            Outcome::Refuse(Refusal::Spf { domain }) => write!(f, "refuse spf {}", Escaped(domain)),
            Outcome::Refuse(Refusal::Iprev { ip }) => write!(f, "refuse iprev {ip}"),
            Outcome::Quarantine(why) => write!(f, "quarantine {}", Escaped(&why.to_string())),
            Outcome::TempFail => f.write_str("tempfail"),
        }
    }
}

/// The results of one message.
#[derive(Debug, Clone)]
pub struct Checked {
    /// `Authentication-Results: ...` with its CRLF, to put on top of an accepted message.
    pub header: String,
    pub outcome: Outcome,
    /// `spf=pass dkim=none dmarc=pass`, for the log.
    pub summary: String,
}

/// The checker: a resolver, our host name (the authserv-id of the header) and the actions.
pub struct SenderAuth {
    authenticator: MessageAuthenticator,
    hostname: String,
    actions: Actions,
}

/// Where the message came from.
pub struct Client<'a> {
    pub ip: IpAddr,
    pub helo: &'a str,
    pub sender: &'a ReversePath,
}

impl SenderAuth {
    /// Checks through `resolver` (see [`crate::dns::resolver`]); `hostname` names us in the
    /// `Authentication-Results:` header.
    pub fn new(resolver: TokioResolver, hostname: &str, actions: Actions) -> SenderAuth {
        SenderAuth {
            authenticator: MessageAuthenticator(resolver),
            hostname: hostname.to_owned(),
            actions,
        }
    }

    /// Checks `message` from `client`.
    pub async fn check(&self, client: &Client<'_>, message: &[u8]) -> Checked {
        self.checked(client, message, true).await
    }

    /// For a message too large to read (`[content] max_scan_size`): `head` is its header
    /// section. SPF and iprev decide as always; DKIM and ARC, which need the body, are not
    /// verified, so DMARC can pass only by SPF alignment. A DMARC failure is then no proof
    /// of forgery (a signature might have passed) but no proof of the contrary either: such a
    /// message goes to quarantine, for the administrator, never delivered and never bounced.
    /// Padding a forged message past the limit gains its sender nothing.
    pub async fn check_header_only(&self, client: &Client<'_>, head: &[u8]) -> Checked {
        let mut checked = self.checked(client, head, false).await;
        if let Outcome::Refuse(Refusal::Dmarc { domain }) = &checked.outcome {
            checked.outcome = Outcome::Quarantine(Reason::dmarc(format!(
                "DMARC {domain}: fails on SPF alone; DKIM not verified (message larger than max_scan_size)"
            )));
        }
        checked
    }

    async fn checked(&self, client: &Client<'_>, message: &[u8], verify_body: bool) -> Checked {
        let host = self.hostname.as_str();
        let sender = client.sender.address().map(ToString::to_string);
        let spf = self.spf(client).await;
        let spf_domain = spf.domain().to_owned();
        let iprev = self.authenticator.verify_iprev(client.ip).await;
        let iprev_failed = matches!(
            iprev.result,
            IprevResult::Fail(_) | IprevResult::PermError(_)
        );
        let iprev_unknown = matches!(iprev.result, IprevResult::TempError(_));
        let mut results = AuthenticationResults::new(host).with_iprev_result(&iprev, client.ip);
        results = match &sender {
            Some(sender) => results.with_spf_mailfrom_result(&spf, client.ip, sender, client.helo),
            None => results.with_spf_ehlo_result(&spf, client.ip, client.helo),
        };
        let mut summary = format!(
            "iprev={} spf={}",
            iprev_name(&iprev.result),
            spf_name(spf.result())
        );
        // Where reverse DNS matters, a lookup that failed for now is a 451, as Postfix's
        // reject_unknown_client_hostname answers 450.
        let iprev_decides = self.actions.iprev_fail != Action::Accept;
        let iprev_outcome = match (iprev_failed, iprev_unknown, self.actions.iprev_fail) {
            _ if !iprev_decides => None,
            (true, _, Action::Reject) => Some(Outcome::Refuse(Refusal::Iprev { ip: client.ip })),
            (true, _, _) => Some(Outcome::Quarantine(Reason::content(
                "iprev",
                "",
                format!("no forward-confirmed reverse DNS for {}", client.ip),
            ))),
            (false, true, _) if self.actions.tempfail_on_dns_error => Some(Outcome::TempFail),
            _ => None,
        };
        if let Some(outcome) = iprev_outcome {
            return Checked {
                header: results.to_header(),
                outcome,
                summary,
            };
        }
        // Parsing computes every DKIM signature's body hash: CPU over the whole message.
        let parsed = crate::cpu::in_place(|| AuthenticatedMessage::parse(message)).await;
        let Some(parsed) = parsed else {
            // Not a message DKIM or DMARC can read: SPF alone decides.
            let outcome = self.decide(&Facts {
                spf: spf.result(),
                spf_domain: &spf_domain,
                dmarc: None,
                dkim_unknown: false,
                arc_vouched: false,
            });
            return Checked {
                header: results.to_header(),
                outcome,
                summary,
            };
        };
        let dkim = match verify_body {
            true => self.authenticator.verify_dkim(&parsed).await,
            false => Vec::new(),
        };
        // ARC (RFC 8617): the chain of a forwarder's seals, recorded for the next hop and for
        // whoever reads the header; a trusted forwarder's word can forgive a DMARC fail.
        let arc = match verify_body {
            true => self.authenticator.verify_arc(&parsed).await,
            false => mail_auth::ArcOutput::default(),
        };
        let arc_sealer = self.trusted_sealer_vouches(&parsed, arc.result());
        let from_domain = parsed
            .from()
            .rsplit_once('@')
            .map_or("", |(_, d)| d)
            .to_owned();
        let mail_from_domain = sender
            .as_deref()
            .and_then(|s| s.rsplit_once('@'))
            .map_or(client.helo, |(_, d)| d);
        let dmarc = self
            .authenticator
            .verify_dmarc(DmarcParameters::new(&parsed, &dkim, mail_from_domain, &spf))
            .await;
        let dkim_pass = dkim
            .iter()
            .any(|d| matches!(d.result(), mail_auth::DkimResult::Pass));
        let dkim_unknown = dkim
            .iter()
            .any(|d| matches!(d.result(), mail_auth::DkimResult::TempError(_)));
        summary.push_str(" dkim=");
        summary.push_str(match (dkim_pass, dkim_unknown, dkim.first()) {
            _ if !verify_body => "none(not verified: larger than max_scan_size)",
            (true, _, _) => "pass",
            (false, true, _) => "temperror",
            (false, false, None) => "none",
            (false, false, Some(first)) => dkim_name(first.result()),
        });
        let dmarc_result = dmarc.result();
        summary.push_str(&format!(" dmarc={}", dmarc_name(&dmarc_result)));
        summary.push_str(&format!(" arc={}", dkim_name(arc.result())));
        if let Some(sealer) = &arc_sealer {
            summary.push_str(&format!(" arc.sealer={sealer}"));
        }
        let header = results
            .with_dkim_results(&dkim, &from_domain)
            .with_arc_result(&arc, client.ip)
            .with_dmarc_result(&dmarc)
            .to_header();
        let outcome = self.decide(&Facts {
            spf: spf.result(),
            spf_domain: &spf_domain,
            dmarc: Some((&dmarc_result, dmarc.policy(), dmarc.domain())),
            dkim_unknown,
            arc_vouched: arc_sealer.is_some(),
        });
        Checked {
            header,
            outcome,
            summary,
        }
    }

    /// Whether SPF is also checked at MAIL FROM ([`SenderAuth::check_spf`]).
    pub fn spf_at_mail(&self) -> bool {
        self.actions.spf_at_mail
    }

    /// SPF alone, for MAIL FROM: the refusal when `spf_at_mail` is set and SPF says `fail`
    /// (and the action is to reject), or a 451 when the lookup failed; otherwise accept, and
    /// the end of DATA decides with DKIM and DMARC.
    pub async fn check_spf(&self, client: &Client<'_>) -> Outcome {
        if !self.actions.spf_at_mail {
            return Outcome::Accept;
        }
        let spf = self.spf(client).await;
        match spf.result() {
            SpfResult::Fail if self.actions.spf_fail == Action::Reject => {
                Outcome::Refuse(Refusal::Spf {
                    domain: spf.domain().to_owned(),
                })
            }
            SpfResult::TempError if self.actions.tempfail_on_dns_error => Outcome::TempFail,
            _ => Outcome::Accept,
        }
    }

    async fn spf(&self, client: &Client<'_>) -> mail_auth::SpfOutput {
        let host = self.hostname.as_str();
        let sender = client.sender.address().map(ToString::to_string);
        let parameters = match &sender {
            Some(sender) => SpfParameters::verify_mail_from(client.ip, client.helo, host, sender),
            None => SpfParameters::verify_ehlo(client.ip, client.helo, host),
        };
        self.authenticator.verify_spf(parameters).await
    }

    /// The sealing domain, when the ARC chain verifies, its newest seal is by a trusted
    /// forwarder, and that forwarder's ARC-Authentication-Results say `dmarc=pass`.
    fn trusted_sealer_vouches(
        &self,
        message: &AuthenticatedMessage<'_>,
        chain: &mail_auth::DkimResult,
    ) -> Option<String> {
        if *chain != mail_auth::DkimResult::Pass {
            return None;
        }
        let seal = message.as_headers.iter().max_by_key(|h| h.header.i)?;
        let sealer = seal.header.d.to_ascii_lowercase();
        if !self
            .actions
            .trusted_arc_sealers
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&sealer))
        {
            return None;
        }
        let results = message
            .aar_headers
            .iter()
            .find(|h| h.header.i == seal.header.i)?;
        let text = String::from_utf8_lossy(results.value).to_ascii_lowercase();
        text.split(|c: char| c == ';' || c.is_whitespace())
            .any(|token| token == "dmarc=pass")
            .then_some(sealer)
    }

    fn decide(&self, facts: &Facts<'_>) -> Outcome {
        let act = |action: Action, refusal: Refusal, why: Reason| match action {
            Action::Reject => Outcome::Refuse(refusal),
            Action::Quarantine => Outcome::Quarantine(why),
            Action::Accept => Outcome::Accept,
        };
        let tempfail = self.actions.tempfail_on_dns_error;
        let dmarc_pass = matches!(facts.dmarc, Some((DmarcResult::Pass, _, _)));
        // A signature whose key could not be fetched might have made DMARC pass.
        if facts.dkim_unknown && !dmarc_pass && tempfail {
            return Outcome::TempFail;
        }
        match facts.dmarc {
            Some((DmarcResult::Fail(_), policy, domain)) if !facts.arc_vouched => {
                let refusal = Refusal::Dmarc {
                    domain: domain.to_owned(),
                };
                match policy {
                    Policy::Reject => {
                        return act(
                            self.actions.dmarc_reject,
                            refusal,
                            Reason::dmarc(format!("DMARC fail for {domain} (p=reject)")),
                        );
                    }
                    Policy::Quarantine => {
                        return act(
                            self.actions.dmarc_quarantine,
                            refusal,
                            Reason::dmarc(format!("DMARC fail for {domain} (p=quarantine)")),
                        );
                    }
                    Policy::None | Policy::Unspecified => {}
                }
            }
            _ => {}
        }
        if facts.spf == SpfResult::Fail && !dmarc_pass && !facts.arc_vouched {
            return act(
                self.actions.spf_fail,
                Refusal::Spf {
                    domain: facts.spf_domain.to_owned(),
                },
                Reason::content("spf", "", format!("SPF fail for {}", facts.spf_domain)),
            );
        }
        let dns_failed = facts.spf == SpfResult::TempError
            || matches!(facts.dmarc, Some((DmarcResult::TempError(_), _, _)));
        if dns_failed && tempfail {
            return Outcome::TempFail;
        }
        Outcome::Accept
    }
}

/// What the decision is made from.
struct Facts<'a> {
    spf: SpfResult,
    spf_domain: &'a str,
    /// The DMARC result, the domain's policy and the domain; `None` for an unreadable message.
    dmarc: Option<(&'a DmarcResult, Policy, &'a str)>,
    /// A DKIM key lookup failed for now.
    dkim_unknown: bool,
    /// A trusted forwarder's ARC chain says DMARC passed before it changed the message.
    arc_vouched: bool,
}

fn spf_name(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// The result's name in Authentication-Results (ARC results are DKIM results too).
fn dkim_name(result: &mail_auth::DkimResult) -> &'static str {
    match result {
        mail_auth::DkimResult::Pass => "pass",
        mail_auth::DkimResult::Neutral(_) => "neutral",
        mail_auth::DkimResult::Fail(_) => "fail",
        mail_auth::DkimResult::PermError(_) => "permerror",
        mail_auth::DkimResult::TempError(_) => "temperror",
        mail_auth::DkimResult::None => "none",
    }
}

fn iprev_name(result: &IprevResult) -> &'static str {
    match result {
        IprevResult::Pass => "pass",
        IprevResult::Fail(_) => "fail",
        IprevResult::TempError(_) => "temperror",
        IprevResult::PermError(_) => "permerror",
        IprevResult::None => "none",
    }
}

fn dmarc_name(result: &DmarcResult) -> &'static str {
    match result {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}
