//! Delivery status notifications from the agent's side: after each attempt the bounce gate
//! (`backstop_dsn::gate`) decides, per recipient and event, whether the sender gets a report;
//! the reports are rendered and handed to the queue, which stores them in the same write as
//! the attempt (so each is queued exactly once). A report goes out like any message, with a
//! null sender (so it is never bounced itself) and a DKIM signature by the key of our host
//! name's domain or its closest parent with one (`dkim::Keys::sign_report`), unsigned when
//! none has a key. Failures no report covers stay with the message, which goes to quarantine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backstop_dsn::gate::{self, Decision, Event, Reason, Sender};
use backstop_dsn::render::{Action, RecipientReport, Report};
use backstop_queue::{Changes, Entry, Notices};
use backstop_types::prometheus::{Kind, Text};
use backstop_types::{EnhancedStatus, Envelope, QueueId, RecipientState, ReversePath, UnixTime};
use tracing::{debug, info, warn};

use crate::agent::Agent;

/// What reports need beyond the agent's routes.
#[derive(Clone)]
pub struct Settings {
    /// When to tell a trusted sender that a message is still not delivered, after arrival.
    pub delay_warnings: Vec<Duration>,
    pub counters: Arc<Counters>,
}

/// Counts for the metrics: delivery attempts per recipient by outcome, reports queued, and
/// reports not sent by reason (the backscatter prevented, and what nobody asked for), and the
/// destinations down now.
#[derive(Debug, Default)]
pub struct Counters {
    /// Delivered, deferred, failed for good.
    outcomes: [AtomicU64; 3],
    sent: AtomicU64,
    suppressed: [AtomicU64; Reason::ALL.len()],
    /// Destinations marked down (their connections failed), now.
    pub destinations_down: AtomicU64,
}

/// The outcome labels, in the order of `Counters::outcomes`.
const OUTCOMES: [&str; 3] = ["delivered", "deferred", "failed"];

impl Counters {
    /// One recipient's attempt ended with `outcome`.
    pub(crate) fn attempted(&self, outcome: &backstop_types::AttemptOutcome) {
        let at = match outcome {
            backstop_types::AttemptOutcome::Delivered(_) => 0,
            backstop_types::AttemptOutcome::Transient(_) => 1,
            backstop_types::AttemptOutcome::Permanent(_) => 2,
        };
        self.outcomes[at].fetch_add(1, Ordering::Relaxed);
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn suppressed(&self, reason: Reason) -> u64 {
        let at = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.suppressed[at].load(Ordering::Relaxed)
    }

    /// Attempts per outcome so far: delivered, deferred, failed.
    pub fn outcomes(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.outcomes[i].load(Ordering::Relaxed))
    }

    fn count_suppressed(&self, reason: Reason) {
        let at = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.suppressed[at].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters in Prometheus' text format.
    pub fn prometheus(&self) -> Text {
        let mut out = Text::new();
        out.family(
            "delivery_recipients_total",
            Kind::Counter,
            "Delivery attempts per recipient, by outcome.",
        );
        for (label, n) in OUTCOMES.iter().zip(&self.outcomes) {
            out.sample(
                "delivery_recipients_total",
                &[("outcome", label)],
                n.load(Ordering::Relaxed),
            );
        }
        out.single(
            "dsn_sent_total",
            Kind::Counter,
            "Delivery status notifications queued.",
            self.sent(),
        );
        out.family(
            "dsn_suppressed_total",
            Kind::Counter,
            "Backscatter prevented: failure and delay notices a classic MTA would have sent to a return path that cannot be verified, by reason.",
        );
        for reason in Reason::ALL.into_iter().filter(|r| r.prevents_backscatter()) {
            out.sample(
                "dsn_suppressed_total",
                &[("reason", reason.label())],
                self.suppressed(reason),
            );
        }
        out.family(
            "dsn_not_requested_total",
            Kind::Counter,
            "Notifications nobody asked for (no NOTIFY for it, NOTIFY=NEVER, a bounce of a bounce), by reason.",
        );
        for reason in Reason::ALL
            .into_iter()
            .filter(|r| !r.prevents_backscatter())
        {
            out.sample(
                "dsn_not_requested_total",
                &[("reason", reason.label())],
                self.suppressed(reason),
            );
        }
        out.single(
            "delivery_destinations_down",
            Kind::Gauge,
            "Destinations marked down after their connections failed.",
            self.destinations_down.load(Ordering::Relaxed),
        );
        out
    }
}

/// How the recipients delivered in this attempt were delivered, for success reports.
pub struct Successes<'a> {
    /// Handed to a next hop that took the DSN request: its report, not ours.
    pub passed_on: &'a [usize],
    /// Handed over SMTP to a next hop without DSN: "relayed".
    pub relayed: &'a [usize],
}

impl Agent {
    /// The reports an attempt's changes call for (see
    /// [`backstop_queue::Queue::record_attempts_with`]). The message itself is read only when
    /// a report may be sent.
    pub(crate) fn notices(
        &self,
        id: QueueId,
        entry: &Entry,
        changes: &Changes,
        successes: &Successes<'_>,
        now: UnixTime,
    ) -> Notices {
        let envelope = &entry.envelope;
        let delay_due = self
            .reports
            .delay_warnings
            .get(entry.delay_notices as usize)
            .is_some_and(|after| now.0 >= envelope.arrival.0.saturating_add(after.as_secs()));
        let mut notices = Notices {
            delay_notices: entry.delay_notices,
            ..Notices::default()
        };
        if changes.failed.is_empty() && changes.delivered.is_empty() && !delay_due {
            return notices;
        }
        let mut body: Option<backstop_types::Body> = None;
        let mut ask = |indexes: &mut dyn Iterator<Item = usize>, event: Event| -> Vec<usize> {
            let mut send = Vec::new();
            for i in indexes {
                let recipient = &envelope.recipients[i];
                // Not asked for (or a bounce of a bounce): nothing to tell anyone, and no
                // backscatter prevented either.
                if let Some(reason) = gate::requested(&envelope.sender, recipient.notify, event) {
                    self.reports.counters.count_suppressed(reason);
                    debug!(queue_id = %id, recipient = %recipient.address, event = event.name(), reason = reason.label(), "no delivery status notification: not requested");
                    continue;
                }
                let message = body.get_or_insert_with(|| {
                    self.queue
                        .message(id)
                        .ok()
                        .flatten()
                        .map(|m| m.body)
                        .unwrap_or_default()
                });
                let sender = Sender {
                    path: &envelope.sender,
                    trust: &envelope.trust,
                    batv_valid: self.batv_valid(&envelope.sender, now),
                    automatic: gate::is_automatic(message.head()),
                };
                match gate::decide(&sender, recipient.notify, event) {
                    Decision::Send => send.push(i),
                    Decision::Suppress(reason) => {
                        self.reports.counters.count_suppressed(reason);
                        warn!(
                            queue_id = %id,
                            sender = %envelope.sender,
                            recipient = %recipient.address,
                            event = event.name(),
                            reason = reason.label(),
                            "no delivery status notification: backscatter prevented"
                        );
                    }
                }
            }
            send
        };

        let failed = ask(&mut changes.failed.iter().copied(), Event::Failed);
        let delivered: Vec<usize> = changes
            .delivered
            .iter()
            .copied()
            .filter(|i| !successes.passed_on.contains(i))
            .collect();
        let (relayed, delivered): (Vec<usize>, Vec<usize>) = delivered
            .into_iter()
            .partition(|i| successes.relayed.contains(i));
        let relayed = ask(&mut relayed.into_iter(), Event::Relayed);
        let delivered = ask(&mut delivered.into_iter(), Event::Delivered);
        let delayed = match delay_due {
            true => {
                notices.delay_notices += 1;
                let pending = (0..envelope.recipients.len())
                    .filter(|i| entry.states[*i].is_pending())
                    .collect::<Vec<_>>();
                ask(&mut pending.into_iter(), Event::Delayed)
            }
            false => Vec::new(),
        };

        for (action, indexes) in [
            (Action::Failed, &failed),
            (Action::Delayed, &delayed),
            (Action::Delivered, &delivered),
            (Action::Relayed, &relayed),
        ] {
            if indexes.is_empty() {
                continue;
            }
            let message = body.get_or_insert_with(|| {
                self.queue
                    .message(id)
                    .ok()
                    .flatten()
                    .map(|m| m.body)
                    .unwrap_or_default()
            });
            if let Some(report) = self.report(id, message, entry, action, indexes, now) {
                notices.reports.push(report);
                self.reports.counters.sent.fetch_add(1, Ordering::Relaxed);
                info!(
                    queue_id = %id,
                    to = %envelope.sender,
                    action = action.name(),
                    recipients = indexes.len(),
                    "delivery status notification"
                );
            }
        }
        notices.reported = failed;
        notices
    }

    /// Whether the return path carries a valid tag of our own BATV keys.
    fn batv_valid(&self, sender: &ReversePath, now: UnixTime) -> bool {
        match (&self.signing.batv, sender.address()) {
            (Some(keys), Some(address)) => keys.verify(address, backstop_batv::day_of(now)).is_ok(),
            _ => false,
        }
    }

    /// One report to the return path about `indexes`: its envelope and message.
    fn report(
        &self,
        id: QueueId,
        original: &backstop_types::Body,
        entry: &Entry,
        action: Action,
        indexes: &[usize],
        now: UnixTime,
    ) -> Option<(Envelope, Vec<u8>)> {
        // A spooled (large) message is returned as its header section, as Postfix's
        // bounce_size_limit cuts a large one short: as headers, whatever RET asked for.
        let headers_only;
        let envelope = match original.tail() {
            None => &entry.envelope,
            Some(_) => {
                let mut e = entry.envelope.clone();
                e.dsn.ret = Some(backstop_types::Ret::Headers);
                headers_only = e;
                &headers_only
            }
        };
        let original = original.head();
        let to = envelope.sender.address()?;
        let until = UnixTime(
            envelope
                .arrival
                .0
                .saturating_add(self.retry.lifetime.as_secs()),
        );
        let lasts: Vec<(Option<&backstop_types::Attempt>, UnixTime)> = indexes
            .iter()
            .map(|&i| match &entry.states[i] {
                RecipientState::Pending { last, .. } => (last.as_ref(), now),
                RecipientState::Delivered { at, last } | RecipientState::Failed { at, last } => {
                    (Some(last), *at)
                }
            })
            .collect();
        // The remote reply as it was given: with its enhanced status code.
        let diagnostics: Vec<Option<(u16, String)>> = lasts
            .iter()
            .map(|(last, _)| {
                last.map(|a| match a.reply.status {
                    Some(status) => (a.reply.code, format!("{status} {}", a.reply.text)),
                    None => (a.reply.code, a.reply.text.clone()),
                })
            })
            .collect();
        let recipients = indexes
            .iter()
            .zip(&lasts)
            .zip(&diagnostics)
            .map(|((&i, (last, at)), diagnostic)| RecipientReport {
                recipient: &envelope.recipients[i],
                status: last.and_then(|a| a.reply.status).unwrap_or(match action {
                    Action::Failed => EnhancedStatus(5, 0, 0),
                    Action::Delayed => EnhancedStatus(4, 0, 0),
                    Action::Delivered | Action::Relayed => EnhancedStatus(2, 0, 0),
                }),
                remote_host: last.and_then(|a| a.remote_host.as_deref()),
                diagnostic: diagnostic
                    .as_ref()
                    .map(|(code, text)| (*code, text.as_str())),
                last_attempt: *at,
                will_retry_until: (action == Action::Delayed).then_some(until),
            })
            .collect();
        let tag = format!("{id}.{}.{action:?}", now.0).to_ascii_lowercase();
        let rendered = Report {
            reporting_mta: &self.hostname,
            to,
            envelope,
            action,
            recipients,
            original,
            date: now,
            message_id: format!("{tag}@{}", self.hostname),
            boundary: format!("{tag}/{}", self.hostname),
        }
        .render();
        let body = match self.signing.dkim.sign_report(&rendered) {
            Some(Ok(signature)) => [signature.as_bytes(), &rendered].concat(),
            Some(Err(e)) => {
                warn!(error = %e, "report not DKIM-signed");
                rendered
            }
            None => rendered,
        };
        let report = Envelope::own_notice(to, &self.hostname, "dsn", now, body.is_ascii());
        Some((report, body))
    }
}
