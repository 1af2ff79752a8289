//! `backstop address test`: what the recipient checks ([`crate::recipient`]) would say about
//! an address, step by step, in their order, without their side effects: no greylisting
//! triplet is recorded, no rate counted, no next hop asked. The lookups that only read (the
//! BATV tag, the recipient table, the LDAP directory) are made.

use backstop_filter::recipients::Verdict;
use backstop_session::{RecipientQuery, RecipientVerdict};
use backstop_types::Reply;

use crate::SitePolicy;

/// One check and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub check: &'static str,
    pub said: String,
}

/// The steps, and the reply RCPT would get when a step decides (`None`: the checks accept;
/// greylisting and rates may still defer at the time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    pub steps: Vec<Step>,
    pub refused: Option<Reply>,
}

impl SitePolicy {
    /// The recipient checks for `query`, explained (see the module's doc).
    pub async fn explain_recipient(&self, query: &RecipientQuery) -> Explained {
        let mut steps = Vec::new();
        let mut step = |check: &'static str, said: String| steps.push(Step { check, said });
        let refused = |steps: Vec<Step>, reply: Reply| Explained {
            steps,
            refused: Some(reply),
        };
        let domain = query.recipient.domain();
        let proxied = self.proxy.as_ref().and_then(|p| {
            let route = p.route(domain)?;
            Some(p.relay(route).remote())
        });
        // 2. BATV.
        let address = match self.bounce_address(query) {
            Ok(address) if address != query.recipient => {
                step("batv", format!("a valid tag: looked up as {address}"));
                address
            }
            Ok(address) => {
                let said = match (&self.batv, &query.sender, query.local) {
                    (Some(check), backstop_types::ReversePath::Null, true) if check.enforce => {
                        "a bounce to an exempt address: taken untagged"
                    }
                    (Some(_), _, true) => "no tag to remove",
                    _ => "not checked (not a local domain, or BATV is off)",
                };
                step("batv", said.to_owned());
                address
            }
            Err(verdict) => {
                step("batv", "a bounce without a valid tag of ours".to_owned());
                let reply = match verdict {
                    RecipientVerdict::NotOurBounce(problem) => problem.reply(),
                    _ => Reply::recipient_lookup_failed(),
                };
                return refused(steps, reply);
            }
        };
        // 3. The table, then the directory.
        let from_table = match (&self.recipients, query.local) {
            (Some(file), true) => Some(file.table().check(&address)),
            _ => None,
        };
        let directory = match (&self.ldap, query.local) {
            (Some(ldap), true) => Some(ldap.check(&address).await),
            _ => None,
        };
        let describe = |v: &Verdict| match v {
            Verdict::Accept(targets) if targets == std::slice::from_ref(&address) => {
                "known".to_owned()
            }
            Verdict::Accept(targets) => format!(
                "known, delivered to {}",
                targets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Verdict::Unknown => "unknown".to_owned(),
            Verdict::Unavailable(why) => format!("unavailable ({why})"),
        };
        if let Some(v) = &from_table {
            step("table", describe(v));
        }
        if let Some(v) = &directory {
            step("ldap", describe(v));
        }
        if from_table.is_none() && directory.is_none() {
            step(
                "recipients",
                match query.local {
                    true => "no table or directory: every local part is taken".to_owned(),
                    false => "a relay domain: no table or directory is asked".to_owned(),
                },
            );
        }
        let targets = match crate::recipient::answer(from_table, directory, &address) {
            Verdict::Accept(targets) => targets,
            Verdict::Unknown => return refused(steps, Reply::unknown_recipient()),
            Verdict::Unavailable(_) => return refused(steps, Reply::recipient_lookup_failed()),
        };
        // 4. Greylisting, 5. rates: said, not done.
        match (&self.greylist, query.trusted) {
            (Some(policy), false) => step(
                "greylist",
                format!(
                    "applies: a first attempt from this client's network, sender and recipient gets 451 4.7.1 for {} s",
                    policy.delay.as_secs()
                ),
            ),
            (Some(_), true) => step("greylist", "not for a trusted client".to_owned()),
            (None, _) => step("greylist", "off".to_owned()),
        }
        let limit = match (&query.user, query.trusted) {
            (Some(_), _) => self.rate_limits.user_recipients.map(|l| ("this user", l)),
            (None, false) => self
                .rate_limits
                .client_recipients
                .map(|l| ("this client", l)),
            (None, true) => None,
        };
        step(
            "rate",
            match limit {
                Some((whose, l)) => format!(
                    "at most {} recipients per {} s for {whose}",
                    l.count,
                    l.window.as_secs()
                ),
                None => "no recipient limit applies".to_owned(),
            },
        );
        // 6. The next hop.
        if let Some(relay) = proxied {
            step(
                "proxy",
                format!("the relay {relay} answers RCPT itself, in the session"),
            );
        } else if let Some(callahead) = &self.callahead {
            for target in &targets {
                let local = self.local_domains.contains(target.domain());
                if let Some(route) = callahead.route_for(target.domain(), local) {
                    step(
                        "callahead",
                        format!(
                            "{} is asked about {target} (answers kept: known {} s, refused {} s)",
                            route.hop.remote(),
                            callahead.ttl.positive.as_secs(),
                            callahead.ttl.negative.as_secs()
                        ),
                    );
                }
            }
        }
        Explained {
            steps,
            refused: None,
        }
    }
}
