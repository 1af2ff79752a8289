//! The delivery loop: lease what is due, deliver, record.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop_queue::{AfterAttempts, Queue, RetryPolicy, StoredMessage};
use backstop_types::{
    Attempt, AttemptOutcome, Domain, EnhancedStatus, Envelope, Recipient, RecipientState,
    RemoteReply, ReversePath, TrustClass, UnixTime,
};

use crate::mx::{Resolver, Unroutable};
use crate::smtp::{self, Client, Endpoint, Message, NextHop, Pool};
use backstop_types::text::Escaped;
use tokio::sync::watch;
use tracing::{error, info, info_span, warn};

/// How long a leased message is ours before it becomes due again (if we die meanwhile).
const LEASE: Duration = Duration::from_secs(600);
/// Messages taken per pass.
const BATCH: usize = 100;
/// How often the queue is looked at when nothing was due.
const IDLE: Duration = Duration::from_millis(500);

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
    pub client: Client,
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
    fn route_for(&self, domain: &Domain) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.any_domain || r.domains.contains(domain))
    }
}

/// What identifies the mail we send as ours: BATV tags on the return path and DKIM signatures,
/// for mail from authenticated submitters (and local networks) in our own domains.
pub struct Signing {
    pub batv: Option<backstop_batv::Keys>,
    pub dkim: Arc<crate::dkim::Keys>,
}

/// What the agent needs.
#[derive(Clone)]
pub struct Agent {
    pub queue: Queue,
    pub routes: Routes,
    pub retry: RetryPolicy,
    /// Our name, for Maildir file names.
    pub hostname: String,
    /// For MX routes; `None` when no route uses MX.
    pub resolver: Option<Resolver>,
    pub signing: Arc<Signing>,
    pub limits: Limits,
    /// Sessions kept open between messages to the same next hop.
    pub pool: Arc<Pool>,
    /// Connections in use per destination.
    pub slots: Arc<Slots>,
    pub reports: crate::report::Settings,
    /// Where we listen ourselves: never a next hop.
    pub own: Arc<crate::own::OwnAddresses>,
}

/// How many connections delivery opens.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// In all (Postfix's default_process_limit for smtp).
    pub connections: usize,
    /// To one destination: a relay's next hop, or one domain by MX (Postfix's
    /// default_destination_concurrency_limit).
    pub per_destination: usize,
}

/// The connections in use per destination, with a wait for a free one.
#[derive(Default)]
pub struct Slots {
    busy: Mutex<HashMap<String, usize>>,
    freed: Condvar,
}

impl Slots {
    /// Waits until `destination` has fewer than `limit` connections in use, and takes one.
    fn acquire(&self, destination: String, limit: usize) -> Slot<'_> {
        let mut busy = lock(&self.busy);
        while busy.get(&destination).copied().unwrap_or(0) >= limit.max(1) {
            busy = self
                .freed
                .wait(busy)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *busy.entry(destination.clone()).or_default() += 1;
        Slot {
            slots: self,
            destination,
        }
    }

    /// The most connections in use to `destination` right now, for tests.
    pub fn in_use(&self, destination: &str) -> usize {
        lock(&self.busy).get(destination).copied().unwrap_or(0)
    }
}

/// A connection slot to a destination, given back when dropped.
struct Slot<'a> {
    slots: &'a Slots,
    destination: String,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = lock(&self.slots.busy);
        if let Some(n) = busy.get_mut(&self.destination) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.destination);
            }
        }
        self.slots.freed.notify_all();
    }
}

/// A lock that a panicking worker cannot poison for the others.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub messages: usize,
    pub delivered: usize,
    pub deferred: usize,
    pub failed: usize,
}

/// Runs passes until `shutdown` turns true; a pass in progress is finished first. Each pass
/// takes the settings `agents` holds when it starts (a reload sends new ones).
pub async fn run(agents: watch::Receiver<Agent>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let agent = agents.borrow().clone();
        let pass = {
            let agent = agent.clone();
            tokio::task::spawn_blocking(move || agent.pass(now()))
        };
        let report = match pass.await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => {
                error!(error = %e, "delivery pass failed");
                PassReport::default()
            }
            Err(e) => {
                error!(error = %e, "delivery pass panicked");
                PassReport::default()
            }
        };
        if report.messages == BATCH {
            continue; // More may be due right now.
        }
        tokio::select! {
            _ = tokio::time::sleep(IDLE) => {}
            _ = shutdown.changed() => {
                // Say QUIT on the connections kept open for reuse.
                let pool = Arc::clone(&agent.pool);
                let _ = tokio::task::spawn_blocking(move || pool.expire(true)).await;
                return;
            }
        }
    }
}

impl Agent {
    /// Leases what is due at `now`, delivers it and records the outcomes. Blocking (file and
    /// database I/O): run it off the async workers.
    ///
    /// Messages are delivered in parallel by up to `limits.connections` threads, each holding at
    /// most one connection; a destination (a relay's next hop, or a domain by MX) gets at most
    /// `limits.per_destination` of them at once.
    pub fn pass(&self, now: UnixTime) -> Result<PassReport, backstop_queue::QueueError> {
        let due = self.queue.lease_due(now, LEASE, BATCH)?;
        let messages = due.len();
        let report = Mutex::new(PassReport {
            messages,
            ..PassReport::default()
        });
        let failure = Mutex::new(None);
        let work = Mutex::new(due.into_iter());
        let workers = self.limits.connections.min(messages);
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let Some(message) = lock(&work).next() else {
                        return;
                    };
                    let mut mine = PassReport::default();
                    let span = info_span!("delivery", queue_id = %message.id);
                    if let Err(e) = span.in_scope(|| self.deliver(&message, now, &mut mine)) {
                        lock(&failure).get_or_insert(e);
                    }
                    let mut report = lock(&report);
                    report.delivered += mine.delivered;
                    report.deferred += mine.deferred;
                    report.failed += mine.failed;
                });
            }
        });
        self.pool.expire(false);
        match failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some(e) => Err(e),
            None => Ok(report.into_inner().unwrap_or_else(PoisonError::into_inner)),
        }
    }

    fn deliver(
        &self,
        message: &StoredMessage,
        now: UnixTime,
        report: &mut PassReport,
    ) -> Result<(), backstop_queue::QueueError> {
        let envelope = &message.entry.envelope;
        let mut outcomes = Vec::new();
        // Recipients handed to a next hop that passes DSN requests on: no success report here.
        let mut passed_on = Vec::new();
        let mut relayed = Vec::new();
        // Recipients that travel together: one transaction per route, and per domain on MX
        // routes.
        let mut batches: Vec<Batch<'_>> = Vec::new();
        for (index, (recipient, state)) in envelope
            .recipients
            .iter()
            .zip(&message.entry.states)
            .enumerate()
        {
            let RecipientState::Pending { next_attempt, .. } = state else {
                continue;
            };
            if next_attempt.0 > now.0 {
                continue;
            }
            let address = &recipient.address;
            let domain = address.domain();
            let route = self.routes.route_for(domain);
            // A local domain goes into Maildirs unless a route names it (LMTP to a mailbox
            // server, say); a catch-all route never takes it.
            let named = route.is_some_and(|r| self.routes.routes[r].domains.contains(domain));
            if self.routes.local_domains.contains(domain) && !named {
                let outcome = crate::maildir::deliver(
                    &self.routes.maildir,
                    &self.hostname,
                    message.id,
                    &envelope.sender,
                    address,
                    &message.body,
                    now,
                );
                outcomes.push((index, outcome));
                continue;
            }
            let Some(route) = route else {
                outcomes.push((index, no_route(domain)));
                continue;
            };
            let key = match self.routes.routes[route].via {
                Via::Relay(_) => None,
                Via::Mx { .. } => Some(domain),
            };
            match batches
                .iter_mut()
                .find(|b| b.route == route && b.domain == key)
            {
                Some(batch) => batch.recipients.push((index, recipient)),
                None => batches.push(Batch {
                    route,
                    domain: key,
                    recipients: vec![(index, recipient)],
                }),
            }
        }
        if !batches.is_empty() {
            let (sender, prefix) = self.identify(envelope, &message.body, now);
            let outbound = Message {
                sender: &sender,
                envelope,
                prefix: prefix.as_bytes(),
                body: &message.body,
            };
            for Batch {
                route,
                domain,
                recipients,
            } in &batches
            {
                let route = &self.routes.routes[*route];
                let delivery = match (&route.via, domain) {
                    (Via::Relay(hop), _) => match hop.endpoint {
                        Endpoint::Tcp(address) if self.own.is_self(address) => {
                            loops_back(recipients, &hop.host)
                        }
                        _ => {
                            let _slot = self
                                .slots
                                .acquire(hop.endpoint.to_string(), self.limits.per_destination);
                            smtp::deliver(&route.client, hop, &outbound, recipients, &self.pool)
                        }
                    },
                    (Via::Mx { port }, Some(domain)) => {
                        self.deliver_mx(&route.client, *port, domain, &outbound, recipients)
                    }
                    (Via::Mx { .. }, None) => unreachable!("MX batches are keyed by domain"),
                };
                if delivery.passed_on {
                    passed_on.extend(recipients.iter().map(|(i, _)| *i));
                }
                // LMTP is final delivery; SMTP to a next hop without DSN is "relayed".
                if !route.client.lmtp && !delivery.passed_on {
                    relayed.extend(recipients.iter().map(|(i, _)| *i));
                }
                outcomes.extend(delivery.outcomes);
            }
        }
        for (index, outcome) in &outcomes {
            let address = &envelope.recipients[*index].address;
            self.reports.counters.attempted(outcome);
            match outcome {
                AttemptOutcome::Delivered(a) => {
                    report.delivered += 1;
                    info!(to = %address, relay = a.remote_host.as_deref().unwrap_or("local"), reply = %Escaped(&a.reply.text), "delivered");
                }
                AttemptOutcome::Transient(a) => {
                    report.deferred += 1;
                    warn!(to = %address, relay = a.remote_host.as_deref().unwrap_or("none"), reply = %Escaped(&a.reply.text), "deferred");
                }
                AttemptOutcome::Permanent(a) => {
                    report.failed += 1;
                    warn!(to = %address, relay = a.remote_host.as_deref().unwrap_or("none"), reply = %Escaped(&a.reply.text), "failed");
                }
            }
        }
        let successes = crate::report::Successes {
            passed_on: &passed_on,
            relayed: &relayed,
        };
        match self.queue.record_attempts_with(
            message.id,
            &outcomes,
            now,
            &self.retry,
            &mut |entry, changes| self.notices(message, entry, changes, &successes, now),
        )? {
            AfterAttempts::Finished(_) => info!("done: removed from the queue"),
            AfterAttempts::Rescheduled { due, .. } => info!(due = due.0, "rescheduled"),
            AfterAttempts::Gone => info!("deleted meanwhile"),
        }
        if outcomes
            .iter()
            .any(|(_, o)| matches!(o, AttemptOutcome::Delivered(a) if a.remote_host.is_some()))
        {
            self.remember_message_id(envelope, &message.body, now)?;
        }
        Ok(())
    }

    /// The return path and the header fields to send mail from our own users with: a BATV tag
    /// and a DKIM signature, when configured. Others' mail goes out as it came.
    fn identify(&self, envelope: &Envelope, body: &[u8], now: UnixTime) -> (ReversePath, String) {
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

    /// Records the Message-ID of mail our users sent, so that replies and bounces to it can be
    /// recognised later.
    fn remember_message_id(
        &self,
        envelope: &Envelope,
        body: &[u8],
        now: UnixTime,
    ) -> Result<(), backstop_queue::QueueError> {
        if !ours(envelope, &self.routes.local_domains) {
            return Ok(());
        }
        let Some(id) = mail_parser::MessageParser::new()
            .parse_headers(body)
            .and_then(|m| m.message_id().map(str::to_owned))
        else {
            return Ok(());
        };
        self.queue
            .record_sent_message_id(backstop_queue::message_id_hash(&id), now)
    }

    /// Delivers to `domain`'s MX hosts: the first that takes the transaction decides.
    fn deliver_mx(
        &self,
        client: &Client,
        port: u16,
        domain: &Domain,
        message: &Message<'_>,
        recipients: &[(usize, &Recipient)],
    ) -> smtp::Delivery {
        let all = |outcome: AttemptOutcome| smtp::Delivery {
            outcomes: recipients
                .iter()
                .map(|(i, _)| (*i, outcome.clone()))
                .collect(),
            try_next: false,
            passed_on: false,
        };
        let Some(resolver) = &self.resolver else {
            return all(unroutable(
                domain,
                Unroutable::Temporary("no resolver".into()),
            ));
        };
        let hosts = match resolver.mx_hosts(domain) {
            Ok(hosts) => hosts,
            Err(why) => return all(unroutable(domain, why)),
        };
        let _slot = self
            .slots
            .acquire(domain.as_str().to_owned(), self.limits.per_destination);
        let mut last = None;
        let mut tried = 0;
        let mut looped = false;
        'hosts: for host in hosts {
            let ips = match resolver.addresses(&host) {
                Ok(ips) => ips,
                Err(why) => {
                    warn!(host = %host, "{}", Escaped(&describe(&why)));
                    last.get_or_insert_with(|| all(unroutable(domain, why)));
                    continue;
                }
            };
            for ip in ips {
                if tried == MAX_MX_ADDRESSES {
                    break;
                }
                // We are this MX: hosts of this preference or worse would only send the mail
                // back to us. Better ones were tried above; with none, it is a loop.
                let address = SocketAddr::new(ip, port);
                if self.own.is_self(address) {
                    warn!(host = %host, %ip, "an MX host of {domain} is this server");
                    looped = true;
                    break 'hosts;
                }
                tried += 1;
                let hop = NextHop {
                    endpoint: Endpoint::Tcp(address),
                    host: host.clone(),
                };
                let delivery = smtp::deliver(client, &hop, message, recipients, &self.pool);
                if !delivery.try_next {
                    return delivery;
                }
                if let Some((_, o)) = delivery.outcomes.first() {
                    warn!(host = %host, %ip, reply = %Escaped(&reply_of(o).text), "trying the next MX address");
                }
                last = Some(delivery);
            }
        }
        match (last, looped) {
            (Some(delivery), _) => delivery,
            (None, true) => loops_back(recipients, domain.as_str()),
            (None, false) => all(unroutable(
                domain,
                Unroutable::Temporary(format!("no MX host of {domain} could be reached")),
            )),
        }
    }
}

/// Recipients of one message that travel in one transaction: same route, and on MX routes the
/// same domain.
struct Batch<'a> {
    route: usize,
    domain: Option<&'a Domain>,
    recipients: Vec<(usize, &'a Recipient)>,
}

/// How many addresses of a domain's MX hosts one attempt tries (Postfix's
/// smtp_mx_address_limit).
const MAX_MX_ADDRESSES: usize = 5;

/// Whether the message is our own users' mail, which we sign and tag.
fn ours(envelope: &Envelope, local_domains: &[Domain]) -> bool {
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

fn reply_of(outcome: &AttemptOutcome) -> &RemoteReply {
    match outcome {
        AttemptOutcome::Delivered(a)
        | AttemptOutcome::Transient(a)
        | AttemptOutcome::Permanent(a) => &a.reply,
    }
}

fn describe(why: &Unroutable) -> String {
    match why {
        Unroutable::NullMx => "the domain accepts no mail (null MX)".into(),
        Unroutable::NoSuchDomain(e) | Unroutable::Temporary(e) => e.clone(),
    }
}

/// The outcome for every recipient of a domain without a host to try.
fn unroutable(domain: &Domain, why: Unroutable) -> AttemptOutcome {
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
/// to myself"). Final: no retry makes it go elsewhere, and the administrator must fix the
/// DNS or the route.
fn loops_back(recipients: &[(usize, &Recipient)], destination: &str) -> smtp::Delivery {
    let outcome = AttemptOutcome::Permanent(Attempt {
        remote_host: None,
        reply: RemoteReply {
            code: 554,
            status: Some(EnhancedStatus(5, 4, 6)),
            text: format!("mail for {destination} loops back to myself"),
        },
    });
    smtp::Delivery {
        outcomes: recipients
            .iter()
            .map(|(i, _)| (*i, outcome.clone()))
            .collect(),
        try_next: false,
        passed_on: false,
    }
}

/// A domain no route covers: the configuration lacks a route (a `"*"` route with `mx = true`
/// is the usual default), which an administrator can add while the message waits.
fn no_route(domain: &Domain) -> AttemptOutcome {
    AttemptOutcome::Transient(Attempt {
        remote_host: None,
        reply: RemoteReply {
            code: 451,
            status: Some(EnhancedStatus(4, 4, 0)),
            text: format!("no route to {domain}: no [[route]] covers it"),
        },
    })
}

fn now() -> UnixTime {
    UnixTime(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

#[cfg(test)]
pub(crate) mod tests;
