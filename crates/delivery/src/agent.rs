//! The delivery loop: lease what is due, deliver, record.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backstop_queue::{AfterAttempts, Queue, RetryPolicy, StoredMessage};
use backstop_types::{
    Attempt, AttemptOutcome, Domain, EnhancedStatus, RecipientState, RemoteReply, UnixTime,
};
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
    /// Recipients in these domains are delivered into Maildirs under `maildir`.
    pub local_domains: Vec<Domain>,
    pub maildir: PathBuf,
    /// Relay routes, first match wins.
    pub relays: Vec<RelayRoute>,
}

/// Recipients in these domains (or all, with `any_domain`) go to this next hop over SMTP.
#[derive(Debug, Clone)]
pub struct RelayRoute {
    pub domains: Vec<Domain>,
    pub any_domain: bool,
    pub relay: crate::smtp::Relay,
}

impl Routes {
    fn relay_for(&self, domain: &Domain) -> Option<usize> {
        self.relays
            .iter()
            .position(|r| r.any_domain || r.domains.contains(domain))
    }
}

/// What the agent needs.
#[derive(Clone)]
pub struct Agent {
    pub queue: Queue,
    pub routes: Routes,
    pub retry: RetryPolicy,
    /// Our name, for Maildir file names.
    pub hostname: String,
}

/// What one pass did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub messages: usize,
    pub delivered: usize,
    pub deferred: usize,
    pub failed: usize,
}

/// Runs passes until `shutdown` turns true; a pass in progress is finished first.
pub async fn run(agent: Agent, mut shutdown: watch::Receiver<bool>) {
    loop {
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
            _ = shutdown.changed() => return,
        }
    }
}

impl Agent {
    /// Leases what is due at `now`, delivers it and records the outcomes. Blocking (file and
    /// database I/O): run it off the async workers.
    pub fn pass(&self, now: UnixTime) -> Result<PassReport, backstop_queue::QueueError> {
        let due = self.queue.lease_due(now, LEASE, BATCH)?;
        let mut report = PassReport {
            messages: due.len(),
            ..PassReport::default()
        };
        for message in due {
            let span = info_span!("delivery", queue_id = %message.id);
            span.in_scope(|| self.deliver(&message, now, &mut report))?;
        }
        Ok(report)
    }

    fn deliver(
        &self,
        message: &StoredMessage,
        now: UnixTime,
        report: &mut PassReport,
    ) -> Result<(), backstop_queue::QueueError> {
        let envelope = &message.entry.envelope;
        let mut outcomes = Vec::new();
        // Recipients for each relay route, sent in one transaction per route.
        let mut relayed: Vec<Vec<(usize, backstop_types::Address)>> =
            vec![Vec::new(); self.routes.relays.len()];
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
            if self.routes.local_domains.contains(address.domain()) {
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
            } else if let Some(route) = self.routes.relay_for(address.domain()) {
                relayed[route].push((index, address.clone()));
            } else {
                outcomes.push((index, no_route()));
            }
        }
        for (route, recipients) in self.routes.relays.iter().zip(relayed) {
            if !recipients.is_empty() {
                outcomes.extend(crate::smtp::deliver(
                    &route.relay,
                    envelope,
                    &recipients,
                    &message.body,
                ));
            }
        }
        for (index, outcome) in &outcomes {
            let address = &envelope.recipients[*index].address;
            match outcome {
                AttemptOutcome::Delivered(a) => {
                    report.delivered += 1;
                    info!(to = %address, reply = %a.reply.text, "delivered");
                }
                AttemptOutcome::Transient(a) => {
                    report.deferred += 1;
                    warn!(to = %address, reply = %a.reply.text, "deferred");
                }
                AttemptOutcome::Permanent(a) => {
                    report.failed += 1;
                    warn!(to = %address, reply = %a.reply.text, "failed");
                }
            }
        }
        match self
            .queue
            .record_attempts(message.id, &outcomes, now, &self.retry)?
        {
            AfterAttempts::Finished(_) => info!("done: removed from the queue"),
            AfterAttempts::Rescheduled { due, .. } => info!(due = due.0, "rescheduled"),
            AfterAttempts::Gone => info!("deleted meanwhile"),
        }
        Ok(())
    }
}

/// Recipients outside the local domains cannot be delivered yet.
fn no_route() -> AttemptOutcome {
    AttemptOutcome::Transient(Attempt {
        remote_host: None,
        reply: RemoteReply {
            code: 451,
            status: Some(EnhancedStatus(4, 4, 0)),
            text: "no route to this domain: delivery by MX lookup is not built yet".into(),
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
mod tests;
