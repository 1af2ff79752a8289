//! Sender authentication at the end of DATA, with mail-auth: forward-confirmed reverse DNS of
//! the client (iprev), SPF (the MAIL FROM identity, or the HELO name for a null sender), DKIM
//! signatures, ARC seals (recorded), and DMARC over SPF and DKIM, decided together so
//! that an aligned DKIM signature can make DMARC pass where SPF failed (a forwarded message).
//!
//! The defaults: DMARC fail under `p=reject` is refused (550 5.7.1), under `p=quarantine` the
//! message is accepted into quarantine, an SPF `fail` without a DMARC pass is refused
//! (550 5.7.23), and a DNS failure that leaves a result unknown is a 451 so the client retries.
//! Accepted mail gets an `Authentication-Results:` header (RFC 8601) with every result.

use std::net::IpAddr;

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
#[derive(Debug, Clone, Copy)]
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
    Quarantine(String),
    /// A lookup failed: try again later.
    TempFail,
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
        let host = self.hostname.as_str();
        let sender = client.sender.address().map(ToString::to_string);
        let spf = match &sender {
            Some(sender) => {
                self.authenticator
                    .verify_spf(SpfParameters::verify_mail_from(
                        client.ip,
                        client.helo,
                        host,
                        sender,
                    ))
                    .await
            }
            None => {
                self.authenticator
                    .verify_spf(SpfParameters::verify_ehlo(client.ip, client.helo, host))
                    .await
            }
        };
        let spf_domain = spf.domain().to_owned();
        let iprev = self.authenticator.verify_iprev(client.ip).await;
        let iprev_failed = matches!(
            iprev.result,
            IprevResult::Fail(_) | IprevResult::PermError(_)
        );
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
        if iprev_failed && self.actions.iprev_fail != Action::Accept {
            let outcome = match self.actions.iprev_fail {
                Action::Reject => Outcome::Refuse(Refusal::Iprev { ip: client.ip }),
                _ => Outcome::Quarantine(format!(
                    "no forward-confirmed reverse DNS for {}",
                    client.ip
                )),
            };
            return Checked {
                header: results.to_header(),
                outcome,
                summary,
            };
        }
        let Some(parsed) = AuthenticatedMessage::parse(message) else {
            // Not a message DKIM or DMARC can read: SPF alone decides.
            let outcome = self.decide(&spf.result(), &spf_domain, None);
            return Checked {
                header: results.to_header(),
                outcome,
                summary,
            };
        };
        let dkim = self.authenticator.verify_dkim(&parsed).await;
        // ARC (RFC 8617): the chain of a forwarder's seals, recorded for the next hop and for
        // whoever reads the header; it changes no decision here.
        let arc = self.authenticator.verify_arc(&parsed).await;
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
        summary.push_str(if dkim_pass {
            " dkim=pass"
        } else if dkim.is_empty() {
            " dkim=none"
        } else {
            " dkim=fail"
        });
        let dmarc_result = dmarc.result();
        summary.push_str(&format!(" dmarc={}", dmarc_name(&dmarc_result)));
        summary.push_str(&format!(" arc={}", arc_name(arc.result())));
        let header = results
            .with_dkim_results(&dkim, &from_domain)
            .with_arc_result(&arc, client.ip)
            .with_dmarc_result(&dmarc)
            .to_header();
        let outcome = self.decide(
            &spf.result(),
            &spf_domain,
            Some((&dmarc_result, dmarc.policy(), dmarc.domain())),
        );
        Checked {
            header,
            outcome,
            summary,
        }
    }

    fn decide(
        &self,
        spf: &SpfResult,
        spf_domain: &str,
        dmarc: Option<(&DmarcResult, Policy, &str)>,
    ) -> Outcome {
        let act = |action: Action, refusal: Refusal, why: String| match action {
            Action::Reject => Outcome::Refuse(refusal),
            Action::Quarantine => Outcome::Quarantine(why),
            Action::Accept => Outcome::Accept,
        };
        if let Some((DmarcResult::Fail(_), policy, domain)) = dmarc {
            let refusal = Refusal::Dmarc {
                domain: domain.to_owned(),
            };
            match policy {
                Policy::Reject => {
                    return act(
                        self.actions.dmarc_reject,
                        refusal,
                        format!("DMARC fail for {domain} (p=reject)"),
                    );
                }
                Policy::Quarantine => {
                    return act(
                        self.actions.dmarc_quarantine,
                        refusal,
                        format!("DMARC fail for {domain} (p=quarantine)"),
                    );
                }
                Policy::None | Policy::Unspecified => {}
            }
        }
        let dmarc_pass = matches!(dmarc, Some((DmarcResult::Pass, _, _)));
        if *spf == SpfResult::Fail && !dmarc_pass {
            return act(
                self.actions.spf_fail,
                Refusal::Spf {
                    domain: spf_domain.to_owned(),
                },
                format!("SPF fail for {spf_domain}"),
            );
        }
        let dns_failed = *spf == SpfResult::TempError
            || matches!(dmarc, Some((DmarcResult::TempError(_), _, _)));
        if dns_failed && self.actions.tempfail_on_dns_error {
            return Outcome::TempFail;
        }
        Outcome::Accept
    }
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

fn arc_name(result: &mail_auth::DkimResult) -> &'static str {
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
