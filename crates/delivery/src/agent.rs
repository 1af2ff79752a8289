//! What delivery knows and does for one message: the routes, the signing keys, local delivery,
//! and recording what an attempt came to. The scheduler ([`crate::scheduler`]) decides when
//! and over which connection.

use std::path::PathBuf;
use std::sync::Arc;

use backstop_queue::{AfterAttempts, Entry, Queue, QueueError, RetryPolicy};
use backstop_smtp_client::{NextHop, Settings};
use backstop_types::text::Escaped;
use backstop_types::{
    Attempt, AttemptOutcome, Domain, EnhancedStatus, Envelope, QueueId, RemoteReply, ReversePath,
    TrustClass, UnixTime,
};
use tracing::{error, info, warn};

use crate::mx::{Resolver, Unroutable};
use crate::scheduler::Limits;

/// Where each recipient goes.
#[derive(Debug, Clone)]
pub struct Routes {
    /// Recipients in these domains are delivered into Maildirs under `maildir`, unless a
    /// route names the domain.
    pub local_domains: Vec<Domain>,
    pub maildir: PathBuf,
    /// Routes for other domains, first match wins.
    pub routes: Vec<Route>,
}

/// Recipients in these domains (or all, with `any_domain`) go this way.
#[derive(Debug, Clone)]
pub struct Route {
    pub domains: Vec<Domain>,
    pub any_domain: bool,
    pub via: Via,
    pub client: Settings,
}

/// A route's next hop.
#[derive(Debug, Clone)]
pub enum Via {
    /// A fixed next hop (an internal server, a smarthost, an LMTP mailbox server).
    Relay(NextHop),
    /// The recipient domain's MX hosts, on this port (25 but in tests).
    Mx { port: u16 },
}

impl Routes {
    pub(crate) fn route_for(&self, domain: &Domain) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.any_domain || r.domains.contains(domain))
    }
}

impl Agent {
    /// Where mail for `domain` goes, and by which route (`None`: into Maildirs); `None`: no
    /// route takes it. A local domain goes into Maildirs unless a route names it (LMTP to a
    /// mailbox server, say); a catch-all route never takes it. So does postmaster at our own
    /// host name when no local domain took it.
    pub fn destination(
        &self,
        domain: &Domain,
    ) -> Option<(crate::scheduler::Destination, Option<usize>)> {
        use crate::scheduler::Destination;
        let routes = &self.routes;
        let route = routes.route_for(domain);
        let named = route.is_some_and(|r| routes.routes[r].domains.contains(domain));
        let local =
            (routes.local_domains.contains(domain) || domain.as_str() == self.hostname) && !named;
        if local {
            return Some((Destination::Local, None));
        }
        let route = route?;
        let destination = match &routes.routes[route].via {
            Via::Relay(hop) => Destination::Relay {
                hop: hop.clone(),
                lmtp: routes.routes[route].client.lmtp,
            },
            Via::Mx { port } => Destination::Mx {
                domain: domain.clone(),
                port: *port,
            },
        };
        Some((destination, Some(route)))
    }
}

/// What identifies the mail we send as ours: BATV tags on the return path and DKIM signatures,
/// for mail from authenticated submitters (and local networks) in our own domains.
pub struct Signing {
    pub batv: Option<backstop_batv::Keys>,
    pub dkim: Arc<crate::dkim::Keys>,
}

/// The delivery settings (a reload sends new ones; work under way keeps the ones it began
/// with).
#[derive(Clone)]
pub struct Agent {
    pub queue: Queue,
    pub routes: Routes,
    pub retry: RetryPolicy,
    /// Our name, for Maildir file names and reports.
    pub hostname: String,
    /// For MX routes; `None` when no route uses MX.
    pub resolver: Option<Resolver>,
    pub signing: Arc<Signing>,
    pub limits: Limits,
    pub reports: crate::report::Settings,
    /// Where we listen ourselves: never a next hop.
    pub own: Arc<crate::own::OwnAddresses>,
    /// The site's state, when it is not this node's (Redis): sent Message-IDs go there too, so
    /// that a bounce for mail sent from here is recognised at every node.
    pub site_sent: Option<SiteSent>,
    /// The memory for messages in progress, shared with the receiving sessions: a delivery
    /// covers its message in it before reading it from the queue.
    pub memory: Arc<backstop_types::budget::MemoryBudget>,
}

/// Where the sent Message-IDs of a site of several nodes go, and for how long.
#[derive(Clone)]
pub struct SiteSent {
    pub state: Arc<dyn backstop_state::State>,
    pub retention: std::time::Duration,
}

impl SiteSent {
    /// Records `message_id` as sent at `now`. A failure is logged: the node's own index has
    /// it, but a bounce for it at another node would be refused as one for mail never sent.
    pub(crate) async fn record(&self, message_id: &str, now: UnixTime) {
        use backstop_state::Key;
        let expires = UnixTime(now.0.saturating_add(self.retention.as_secs()));
        let key = Key::SentId(backstop_state::message_id_hash(message_id));
        let at = now.0.to_be_bytes();
        let result = match self.state.put(&key, &at, expires, now).await {
            Ok(()) => self.state.put(&Key::AnySent, b"1", expires, now).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            warn!(message_id = %Escaped(message_id), error = %e, state = %self.state.describe(), "sent Message-ID not recorded in the site's state: a bounce for it at another node will be refused");
        }
    }
}

/// What one attempt on a message came to, over all its destinations.
#[derive(Debug, Default)]
pub struct Attempted {
    pub outcomes: Vec<(usize, AttemptOutcome)>,
    /// Handed to a next hop that took the DSN request: its report, not ours.
    pub passed_on: Vec<usize>,
    /// Handed over SMTP to a next hop without DSN: "relayed".
    pub relayed: Vec<usize>,
    /// The Message-ID of our user's message, delivered to a remote host.
    pub sent_message_id: Option<String>,
}

impl Agent {
    /// Delivers recipients of message `id` into their Maildirs; `None` when the message is
    /// gone. Blocking (file system): run it on the blocking pool.
    pub(crate) fn deliver_local(
        &self,
        id: QueueId,
        recipients: &[usize],
        now: UnixTime,
    ) -> Option<Vec<(usize, AttemptOutcome)>> {
        let message = match self.queue.message(id) {
            Ok(Some(message)) => message,
            Ok(None) => return None,
            Err(e) => {
                let outcome = AttemptOutcome::Transient(Attempt {
                    remote_host: None,
                    reply: RemoteReply {
                        code: 451,
                        status: Some(EnhancedStatus(4, 3, 0)),
                        text: format!("reading the message: {e}"),
                    },
                });
                return Some(recipients.iter().map(|&i| (i, outcome.clone())).collect());
            }
        };
        let envelope = &message.entry.envelope;
        Some(
            recipients
                .iter()
                .map(|&i| {
                    let outcome = crate::maildir::deliver(
                        &self.routes.maildir,
                        &self.hostname,
                        id,
                        &envelope.sender,
                        &envelope.recipients[i].address,
                        &message.body,
                        now,
                    );
                    (i, outcome)
                })
                .collect(),
        )
    }

    /// The return path and the header fields to send mail from our own users with: a BATV tag
    /// and a DKIM signature, when configured. Others' mail goes out as it came.
    pub(crate) fn identify(
        &self,
        envelope: &Envelope,
        body: &[u8],
        now: UnixTime,
    ) -> (ReversePath, String) {
        if !ours(envelope, &self.routes.local_domains) {
            return (envelope.sender.clone(), String::new());
        }
        let sender = match (&self.signing.batv, &envelope.sender) {
            (Some(keys), ReversePath::Address(a)) => {
                ReversePath::Address(keys.sign(a, backstop_batv::day_of(now)))
            }
            _ => envelope.sender.clone(),
        };
        let signature = match self.signing.dkim.sign(body) {
            Some(Ok(header)) => header,
            Some(Err(e)) => {
                // Sent unsigned rather than not at all; the log says why.
                error!(error = %e, "not DKIM-signed");
                String::new()
            }
            None => String::new(),
        };
        (sender, signature)
    }

    /// Records an attempt: logs each recipient's outcome, counts it, asks the bounce gate
    /// which reports are due, and writes it all (with the sent Message-ID) in one synced write.
    /// Blocking (RocksDB): run it on the blocking pool.
    pub(crate) fn record(
        &self,
        id: QueueId,
        entry: &Entry,
        attempted: Attempted,
        now: UnixTime,
    ) -> Result<(), QueueError> {
        for (_, outcome) in &attempted.outcomes {
            self.reports.counters.attempted(outcome);
        }
        let successes = crate::report::Successes {
            passed_on: &attempted.passed_on,
            relayed: &attempted.relayed,
        };
        let sent = attempted
            .sent_message_id
            .as_deref()
            .map(backstop_queue::message_id_hash);
        let after = self.queue.record_attempts_with(
            id,
            &attempted.outcomes,
            now,
            &self.retry,
            sent,
            &mut |entry, changes| self.notices(id, entry, changes, &successes, now),
        )?;
        let recorded = match &after {
            AfterAttempts::Finished(entry) | AfterAttempts::Rescheduled { entry, .. } => {
                Some(entry)
            }
            AfterAttempts::Gone => None,
        };
        log_outcomes(entry, recorded, &attempted.outcomes, now);
        match after {
            AfterAttempts::Finished(_) => info!("done: removed from the queue"),
            AfterAttempts::Rescheduled { due, .. } => {
                info!(due = %due.to_rfc5322(), "rescheduled")
            }
            AfterAttempts::Gone => info!("deleted meanwhile"),
        }
        Ok(())
    }
}

/// One line per recipient and attempt, greppable as Postfix's: to=, from=, relay=, delay=,
/// the whole reply with its code, and status= as the queue recorded it (`recorded`, the entry
/// after the attempt; `None` when the message was deleted meanwhile): `sent`, `deferred`,
/// `bounced` (failed, and a report goes to the sender) or `quarantined` (failed, no report:
/// the message is held in quarantine). A recipient whose lifetime ran out with this attempt is
/// a failure, with the queue's own reply for it.
fn log_outcomes(
    entry: &Entry,
    recorded: Option<&Entry>,
    outcomes: &[(usize, AttemptOutcome)],
    now: UnixTime,
) {
    let envelope = &entry.envelope;
    // Seconds since the message arrived, as Postfix's delay=.
    let delay = now.0.saturating_sub(envelope.arrival.0);
    // Addresses are the client's words: a bidi override or a line separator in one must not
    // rewrite the line it is logged in.
    let from = Escaped(&envelope.sender.to_string()).to_string();
    for (index, outcome) in outcomes {
        let to = Escaped(&envelope.recipients[*index].address.to_string()).to_string();
        let attempt = match outcome {
            AttemptOutcome::Delivered(a)
            | AttemptOutcome::Transient(a)
            | AttemptOutcome::Permanent(a) => a,
        };
        let state = recorded.and_then(|e| Some((e.states.get(*index)?, e.reported.get(*index)?)));
        let (status, attempt) = match (outcome, state) {
            (AttemptOutcome::Delivered(_), _) => ("sent", attempt),
            (_, Some((backstop_types::RecipientState::Failed { last, .. }, true))) => {
                ("bounced", last)
            }
            (_, Some((backstop_types::RecipientState::Failed { last, .. }, false))) => {
                ("quarantined", last)
            }
            (AttemptOutcome::Permanent(_), None) => ("failed", attempt),
            (_, _) => ("deferred", attempt),
        };
        let relay = attempt.remote_host.as_deref().unwrap_or(match status {
            "sent" => "local",
            _ => "none",
        });
        let reply = Escaped(&attempt.reply.to_string()).to_string();
        match status {
            "sent" => {
                info!(%to, %from, relay = %relay, delay, %reply, status = %status, "delivered")
            }
            "deferred" => {
                warn!(%to, %from, relay = %relay, delay, %reply, status = %status, "deferred")
            }
            _ => warn!(%to, %from, relay = %relay, delay, %reply, status = %status, "failed"),
        }
    }
}

/// Whether the message is our own users' mail, which we sign and tag.
pub(crate) fn ours(envelope: &Envelope, local_domains: &[Domain]) -> bool {
    let trusted = matches!(
        envelope.trust,
        TrustClass::Authenticated { .. } | TrustClass::LocalNetwork
    );
    trusted
        && envelope
            .sender
            .address()
            .is_some_and(|a| local_domains.contains(a.domain()))
}

/// The message's Message-ID, if it has one.
pub(crate) fn message_id(body: &[u8]) -> Option<String> {
    mail_parser::MessageParser::new()
        .parse_headers(body)
        .and_then(|m| m.message_id().map(str::to_owned))
}

pub(crate) fn describe(why: &Unroutable) -> String {
    match why {
        Unroutable::NullMx => "the domain accepts no mail (null MX)".into(),
        Unroutable::NoSuchDomain(e) | Unroutable::Temporary(e) => e.clone(),
    }
}

/// The outcome for every recipient of a domain without a host to try.
pub(crate) fn unroutable(domain: &Domain, why: Unroutable) -> AttemptOutcome {
    let text = describe(&why);
    let (code, status) = match why {
        // RFC 7505 3.
        Unroutable::NullMx => (556, EnhancedStatus(5, 1, 10)),
        Unroutable::NoSuchDomain(_) => (550, EnhancedStatus(5, 1, 2)),
        Unroutable::Temporary(_) => (451, EnhancedStatus(4, 4, 3)),
    };
    let attempt = Attempt {
        remote_host: None,
        reply: RemoteReply {
            code,
            status: Some(status),
            text: format!("{text} (delivering to {domain})"),
        },
    };
    if code >= 500 {
        AttemptOutcome::Permanent(attempt)
    } else {
        AttemptOutcome::Transient(attempt)
    }
}

/// The next hop is this server itself: sending would loop (Postfix: "mail for X loops back
/// to myself"). Final: no retry makes it go elsewhere; the administrator must fix the DNS or
/// the route.
pub(crate) fn loops_back(destination: &str) -> AttemptOutcome {
    AttemptOutcome::Permanent(Attempt {
        remote_host: None,
        reply: RemoteReply {
            code: 554,
            status: Some(EnhancedStatus(5, 4, 6)),
            text: format!("mail for {destination} loops back to myself"),
        },
    })
}

/// A domain no route covers: the configuration lacks a route (a `"*"` route with `mx = true`
/// is the usual default), which an administrator can add while the message waits.
pub(crate) fn no_route(domain: &Domain) -> AttemptOutcome {
    AttemptOutcome::Transient(Attempt {
        remote_host: None,
        reply: RemoteReply {
            code: 451,
            status: Some(EnhancedStatus(4, 4, 0)),
            text: format!("no route to {domain}: no [[route]] covers it"),
        },
    })
}

#[cfg(test)]
pub(crate) mod tests;
