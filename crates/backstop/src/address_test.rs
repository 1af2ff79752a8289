//! `backstop address test ADDRESS`: how the running server would handle a recipient (like
//! `sendmail -bv` and `postmap -q`): the RCPT rules of the listener a client would use
//! (`backstop_session::recipient_scope`), then the recipient checks in their order, explained
//! without their side effects (`SitePolicy::explain_recipient`: no greylisting triplet, no
//! rate count, no next hop asked), the reply RCPT would get, and where delivery would take the
//! message (`Agent::destination`, with the MX hosts looked up). Nothing is sent.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use backstop_delivery::agent::Agent;
use backstop_delivery::scheduler::Destination;
use backstop_policy::SitePolicy;
use backstop_session::{recipient_scope, RecipientQuery, Scope, TransactionRef};
use backstop_types::text::Escaped;
use backstop_types::{Address, Reply, ReversePath};
use serde::{Deserialize, Serialize};

use crate::sink::QueueSink;

/// The sessions' rules, as the admin API sees them.
pub(crate) type SmtpContext = Arc<backstop_listener::Context<QueueSink, SitePolicy>>;

/// The question, as the CLI sends it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Question {
    pub address: String,
    /// MAIL FROM; `someone@example.org` when not given, `<>` for a bounce.
    #[serde(default)]
    pub sender: Option<String>,
    /// The client's address; `192.0.2.1` (a stranger) when not given.
    #[serde(default)]
    pub client: Option<String>,
    /// A logged-in user (a submission).
    #[serde(default)]
    pub user: Option<String>,
    /// The listener; by default the first that needs no login (or, with a user, the first
    /// that does).
    #[serde(default)]
    pub listener: Option<String>,
}

/// One check and what it says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Said {
    pub check: String,
    pub said: String,
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub address: String,
    pub sender: String,
    pub client: String,
    pub listener: String,
    pub trusted: bool,
    pub steps: Vec<Said>,
    /// The reply RCPT would get.
    pub reply: String,
    /// Where delivery would take it; `None` when RCPT refuses it.
    pub delivery: Option<String>,
}

/// Answers `question` with the server's current rules.
pub(crate) async fn answer(
    smtp: &SmtpContext,
    agent: &Agent,
    question: &Question,
) -> anyhow::Result<Answer> {
    let address = Address::parse(question.address.trim_matches(['<', '>']))
        .map_err(|e| anyhow::anyhow!("{}: {e}", Escaped(&question.address)))?;
    let sender = match question
        .sender
        .as_deref()
        .map(|s| s.trim_matches(['<', '>']))
    {
        None => ReversePath::Address(Address::parse("someone@example.org")?),
        Some("") => ReversePath::Null,
        Some(s) => ReversePath::Address(
            Address::parse(s).map_err(|e| anyhow::anyhow!("--sender {}: {e}", Escaped(s)))?,
        ),
    };
    let client: IpAddr = match &question.client {
        None => IpAddr::from([192, 0, 2, 1]),
        Some(ip) => ip
            .parse()
            .with_context(|| format!("--client {}: not an IP address", Escaped(ip)))?,
    };
    let mut names: Vec<&String> = smtp.listeners.keys().collect();
    names.sort();
    let listener = match &question.listener {
        Some(name) => match smtp.listeners.get_key_value(name) {
            Some((name, _)) => name,
            None => bail!(
                "no listener {}; there are: {}",
                Escaped(name),
                names
                    .iter()
                    .map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        None => {
            let wants_login = question.user.is_some();
            names
                .iter()
                .find(|n| smtp.listeners[n.as_str()].session.require_auth == wants_login)
                .or(names.first())
                .copied()
                .context("the server has no listener")?
        }
    };
    let session = &smtp.listeners[listener].session;
    let local_network = smtp.local_networks.iter().any(|n| n.contains(client));
    let trusted = question.user.is_some() || local_network;
    let mut steps = Vec::new();
    let mut step = |check: &str, said: String| {
        steps.push(Said {
            check: check.to_owned(),
            said,
        })
    };
    let scope = recipient_scope(session, &address, trusted);
    let mut refused: Option<Reply> = None;
    match scope {
        Err(reply) => {
            step("relay", "refused by the relay rules".into());
            refused = Some(reply);
        }
        Ok(scope) => {
            step(
                "relay",
                match scope {
                    Scope::Postmaster => "postmaster of a domain we serve: taken unverified",
                    Scope::Local => "a local domain",
                    Scope::RelayDomain => "a relay domain",
                    Scope::Onward => "elsewhere: relayed for a trusted client, not looked up",
                }
                .into(),
            );
            if session.checks.recipients && matches!(scope, Scope::Local | Scope::RelayDomain) {
                let query = RecipientQuery {
                    recipient: address.clone(),
                    sender: sender.clone(),
                    client,
                    local: scope == Scope::Local,
                    trusted,
                    user: question.user.clone(),
                    transaction: TransactionRef {
                        session: 0,
                        number: 1,
                    },
                    proxied: None,
                    size: None,
                };
                let explained = smtp.policy.explain_recipient(&query).await;
                for s in explained.steps {
                    step(s.check, s.said);
                }
                refused = explained.refused;
            }
        }
    }
    let reply = refused.clone().unwrap_or_else(Reply::recipient_ok);
    let delivery = match refused {
        Some(_) => None,
        None => Some(destination(agent, &address).await),
    };
    Ok(Answer {
        address: address.to_string(),
        sender: sender.to_string(),
        client: client.to_string(),
        listener: listener.clone(),
        trusted,
        steps,
        reply: reply.to_string(),
        delivery,
    })
}

/// Where delivery would take mail for `address`, with the MX hosts looked up.
async fn destination(agent: &Agent, address: &Address) -> String {
    let domain = address.domain();
    match agent.destination(domain) {
        None => format!("no route takes {domain}: it would fail (a route with domains = [\"*\"] takes every domain)"),
        Some((Destination::Local, _)) => match backstop_delivery::maildir::folder(&agent.routes.maildir, address) {
            Some(folder) => format!("into the Maildir {}", folder.display()),
            None => "into a Maildir, but no Maildir can hold this name".into(),
        },
        Some((Destination::Relay { hop, lmtp }, _)) => format!(
            "to {} by {}",
            hop.remote(),
            if lmtp { "LMTP" } else { "SMTP" }
        ),
        Some((Destination::Mx { domain, port }, _)) => match &agent.resolver {
            None => format!("to the MX hosts of {domain}, port {port}"),
            Some(resolver) => match resolver.mx_hosts(&domain).await {
                Ok(hosts) => format!(
                    "to the MX hosts of {domain}, port {port}: {}",
                    hosts.join(", ")
                ),
                Err(why) => format!("to the MX hosts of {domain}, port {port}: {why:?}"),
            },
        },
    }
}

/// The answer as a table.
pub fn render(answer: &Answer) -> String {
    let mut out = format!(
        "{}\n  from {} at {} on listener {} ({})\n",
        answer.address,
        answer.sender,
        answer.client,
        answer.listener,
        if answer.trusted {
            "trusted"
        } else {
            "not trusted"
        }
    );
    for s in &answer.steps {
        out.push_str(&format!("  {:<12} {}\n", s.check, s.said));
    }
    out.push_str(&format!("  {:<12} {}\n", "RCPT", answer.reply));
    if let Some(delivery) = &answer.delivery {
        out.push_str(&format!("  {:<12} {}\n", "delivery", delivery));
    }
    out
}
