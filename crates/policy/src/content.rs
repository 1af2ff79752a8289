//! The end of DATA, before the reply: RFC 5322 sanity, bounce provenance, SPF/DKIM/DMARC for
//! clients we do not trust (with an `Authentication-Results:` field for accepted mail), then
//! the configured content pipeline, which sees the message as it will be stored.

use backstop_filter::content::ContentAction;
use backstop_filter::pipeline::{Draft, Outcome};
use backstop_session::{ContentVerdict, Message};
use backstop_types::budget::Reservation;
use backstop_types::quarantine::Reason;
use backstop_types::text::Escaped;
use backstop_types::{Body, Reply, ReversePath, TrustClass};
use tracing::{info, warn};

use crate::{Sent, SitePolicy};

impl SitePolicy {
    /// Every check on a whole message, in order; the first that does not pass answers.
    pub(crate) async fn content(&self, message: &Message) -> ContentVerdict {
        let rfc5322 = match self.rfc5322 {
            ContentAction::Off => Ok(()),
            _ => match rfc5322(&message.body).await {
                Ok(found) => found,
                Err(e) => {
                    warn!(error = %e, "reading the spooled message for the RFC 5322 check: 451");
                    return ContentVerdict::Refuse(Reply::check_unavailable());
                }
            },
        };
        match (self.rfc5322, rfc5322) {
            (ContentAction::Off, _) | (_, Ok(())) => {}
            (ContentAction::Reject, Err(v)) => {
                return ContentVerdict::Refuse(
                    Reply::content_refused(&v.to_string()).decided_by("rfc5322"),
                );
            }
            (ContentAction::Quarantine, Err(v)) => {
                return self
                    .quarantined(message, Reason::content("rfc5322", "", v.to_string()))
                    .await;
            }
        }
        let envelope = &message.envelope;
        let provenance_applies = envelope.recipients.iter().any(|r| {
            let domain = r.address.domain();
            if self.bounce_provenance_domains.is_empty() {
                self.local_domains.contains(domain)
            } else {
                self.bounce_provenance_domains.contains(domain)
            }
        });
        if self.bounce_provenance && provenance_applies && envelope.sender == ReversePath::Null {
            // A bounce names what it returns near its start: a large one is read that far.
            let start = match message.body.in_memory() {
                Some(whole) => Ok(whole.to_vec()),
                None => {
                    let body = message.body.clone();
                    tokio::task::spawn_blocking(move || body.read_prefix(BOUNCE_PREFIX))
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                }
            };
            let start = match start {
                Ok(start) => start,
                Err(e) => {
                    warn!(error = %e, "reading the spooled bounce: 451");
                    return ContentVerdict::Refuse(Reply::check_unavailable());
                }
            };
            if let Some(reply) = self.provenance(&start).await {
                return ContentVerdict::Refuse(reply);
            }
        }
        // Our own users' mail is not theirs to prove.
        let untrusted = envelope.trust == TrustClass::Unverified;
        let authenticates = self.sender_auth.is_some() && untrusted;
        if !authenticates && self.content.is_empty() {
            return ContentVerdict::Accept;
        }
        // The checks from here on read the whole message: a spooled one is read into memory
        // within the budget, or, larger than `max_scan_size`, let through unchecked by them.
        let size = message.body.len();
        if let (Some(tail), true) = (
            message.body.tail(),
            self.max_scan_size.is_some_and(|max| size > max),
        ) {
            // Only the checks that stream it from its file (clamd, milters) see it.
            warn!(size, max_scan_size = self.max_scan_size, "message larger than max_scan_size: DKIM, ARC and the checks that need it whole skipped");
            let mut head = format!(
                "Authentication-Results: {}; none (message of {size} octets, larger than max_scan_size: DKIM and content not checked)\r\n",
                self.hostname
            )
            .into_bytes();
            // SPF, iprev and DMARC by SPF alignment need no body.
            if let (Some(auth), true) = (&self.sender_auth, authenticates) {
                let client = backstop_filter::sender_auth::Client {
                    ip: envelope.client.ip,
                    helo: &envelope.client.helo,
                    sender: &envelope.sender,
                };
                let checked = auth.check_header_only(&client, message.body.head()).await;
                info!(results = %checked.summary, outcome = %checked.outcome, "sender authentication");
                if let Some(verdict) = sender_verdict(checked.outcome) {
                    return self.unless_virus(message, verdict).await;
                }
                head.splice(0..0, checked.header.into_bytes());
            }
            head.extend_from_slice(message.body.head());
            let mut draft = Draft::spooled(envelope.clone(), head, tail.clone());
            draft.changed = true;
            let outcome = self.content.run(&mut draft).await;
            return verdict(outcome, draft, message.proxied, None);
        }
        let mut share = Reservation::new(&self.memory);
        let mut loaded = None;
        let whole: &[u8] = match message.body.in_memory() {
            Some(whole) => whole,
            None => {
                // The message read, with room for our field on top: the checks get it in place.
                if !share.cover(size.saturating_add(FIELD_ROOM as u64)) {
                    info!(size, "no memory to check the message now: 452");
                    return ContentVerdict::Refuse(Reply::insufficient_memory());
                }
                let body = message.body.clone();
                let read = move || body.read_all_with_room(FIELD_ROOM);
                let read = match tokio::task::spawn_blocking(read).await {
                    Ok(Ok(whole)) => whole,
                    Ok(Err(e)) => {
                        warn!(error = %e, "reading the spooled message for the checks: 451");
                        return ContentVerdict::Refuse(Reply::check_unavailable());
                    }
                    Err(e) => {
                        warn!(error = %e, "reading the spooled message for the checks: 451");
                        return ContentVerdict::Refuse(Reply::check_unavailable());
                    }
                };
                loaded.insert(read).as_slice()
            }
        };
        let mut header = None;
        if let (Some(auth), true) = (&self.sender_auth, untrusted) {
            use backstop_filter::sender_auth::Client;
            let client = Client {
                ip: envelope.client.ip,
                helo: &envelope.client.helo,
                sender: &envelope.sender,
            };
            let checked = auth.check(&client, whole).await;
            info!(results = %checked.summary, outcome = %checked.outcome, "sender authentication");
            if let Some(verdict) = sender_verdict(checked.outcome) {
                return self.unless_virus(message, verdict).await;
            }
            header = Some(checked.header);
        }
        if header.is_none() && self.content.is_empty() {
            return ContentVerdict::Accept;
        }
        if self.content.is_empty() {
            // Only the header to add: the stored body (in memory or spooled) keeps its place.
            let mut checked = message.clone();
            checked
                .body
                .prepend(header.as_deref().unwrap_or_default().as_bytes());
            return ContentVerdict::AcceptChanged(Box::new(checked));
        }
        // The checks see (and may change) the message as it will be stored.
        let field = header.as_deref().unwrap_or_default().as_bytes();
        let body = match loaded {
            // Moved up in place (the room was kept for it), not copied.
            Some(mut read) => {
                read.splice(0..0, field.iter().copied());
                read
            }
            None => [field, message.body.head()].concat(),
        };
        let mut draft = Draft::new(envelope.clone(), body);
        draft.changed = header.is_some();
        let outcome = self.content.run(&mut draft).await;
        verdict(
            outcome,
            draft,
            message.proxied,
            message.body.tail().cloned(),
        )
    }

    /// The refusal for a bounce returning a message we never sent; `None` to go on: it is ours,
    /// it returns nothing we could look up, or we have never sent anything to compare with. A
    /// bounce whose Message-ID cannot be looked up now is refused for now (451).
    async fn provenance(&self, body: &[u8]) -> Option<Reply> {
        let id = backstop_filter::provenance::returned_message_id(body)?;
        match crate::store::sent(&*self.state, &id, self.clock.now()).await {
            Ok(Sent::No) => {
                info!(message_id = %Escaped(&id), "bounce returns a message we never sent: 550");
                Some(Reply::bounce_not_ours())
            }
            Ok(Sent::Yes | Sent::NothingYet) => None,
            Err(e) => {
                warn!(error = %e, state = %self.state.describe(), "sent Message-ID index unavailable: 451");
                Some(Reply::bounce_provenance_unavailable())
            }
        }
    }
}

/// The session's verdict from the pipeline's outcome on `draft`. A spooled message keeps its
/// file unless a check gave it a new body: read whole for the checks (`spooled`, its file) or
/// streamed to them (`draft.tail`), what is stored is the changed header section and the file.
fn verdict(
    outcome: Outcome,
    draft: Draft,
    proxied: Option<backstop_session::TransactionRef>,
    spooled: Option<backstop_types::Spooled>,
) -> ContentVerdict {
    match outcome {
        Outcome::Accept if draft.envelope.recipients.is_empty() => {
            ContentVerdict::Discard("a content check removed every recipient".into())
        }
        Outcome::Accept if draft.changed => ContentVerdict::AcceptChanged(Box::new(Message {
            envelope: draft.envelope,
            body: match (draft.tail, spooled) {
                (Some(tail), _) => Body::spooled(draft.message, tail),
                (None, Some(tail)) if !draft.body_replaced => {
                    let mut head = draft.message;
                    head.truncate(backstop_filter::pipeline::body_offset(&head));
                    head.shrink_to_fit();
                    Body::spooled(head, tail)
                }
                (None, _) => Body::new(draft.message),
            },
            proxied,
        })),
        Outcome::Accept => ContentVerdict::Accept,
        Outcome::Refuse(reply) => ContentVerdict::Refuse(reply),
        Outcome::Quarantine(reason) => ContentVerdict::Quarantine(reason),
        Outcome::Discard(reason) => ContentVerdict::Discard(reason),
    }
}

impl SitePolicy {
    /// A quarantine verdict reached before the content checks ran (sender authentication,
    /// the RFC 5322 check): the virus scanners still look at the message, so that a hold its
    /// recipient may lift never carries a virus. Other verdicts pass through.
    async fn unless_virus(&self, message: &Message, verdict: ContentVerdict) -> ContentVerdict {
        match verdict {
            ContentVerdict::Quarantine(reason) => self.quarantined(message, reason).await,
            other => other,
        }
    }

    async fn quarantined(&self, message: &Message, reason: Reason) -> ContentVerdict {
        if !self.content.scans_for_viruses() {
            return ContentVerdict::Quarantine(reason);
        }
        let envelope = message.envelope.clone();
        let draft = match (message.body.in_memory(), message.body.tail()) {
            (Some(whole), _) => Draft::new(envelope, whole.to_vec()),
            (None, Some(tail)) => {
                Draft::spooled(envelope, message.body.head().to_vec(), tail.clone())
            }
            (None, None) => Draft::new(envelope, message.body.head().to_vec()),
        };
        match self.content.virus_verdict(&draft, 0).await {
            Some(Outcome::Refuse(reply)) => ContentVerdict::Refuse(reply),
            Some(Outcome::Quarantine(virus)) => ContentVerdict::Quarantine(virus),
            _ => ContentVerdict::Quarantine(reason),
        }
    }
}

/// The verdict sender authentication's outcome gives, unless it lets the message go on.
fn sender_verdict(outcome: backstop_filter::sender_auth::Outcome) -> Option<ContentVerdict> {
    use backstop_filter::sender_auth::{Outcome, Refusal};
    let reply = match outcome {
        Outcome::Accept => return None,
        Outcome::Refuse(Refusal::Dmarc { domain }) => Reply::dmarc_rejected(&domain),
        Outcome::Refuse(Refusal::Spf { domain }) => Reply::spf_failed(&domain),
        Outcome::Refuse(Refusal::Iprev { ip }) => Reply::reverse_dns_failed(ip),
        Outcome::Quarantine(reason) => return Some(ContentVerdict::Quarantine(reason)),
        Outcome::TempFail => Reply::sender_auth_unavailable(),
    };
    Some(ContentVerdict::Refuse(reply))
}

/// Room kept before a spooled message read for the checks, for our `Authentication-Results:`.
const FIELD_ROOM: usize = 8 * 1024;

/// How much of a large bounce is read to find the message it returns.
const BOUNCE_PREFIX: usize = 1024 * 1024;

/// The RFC 5322 check on a message in memory or spooled (the rest read from its file on the
/// blocking pool).
async fn rfc5322(body: &Body) -> std::io::Result<Result<(), backstop_filter::content::Violation>> {
    match (body.in_memory(), body.tail()) {
        (Some(whole), _) => Ok(backstop_filter::content::rfc5322(whole)),
        (None, Some(tail)) => {
            let (head, tail) = (body.head().to_vec(), tail.clone());
            tokio::task::spawn_blocking(move || {
                let file = std::io::Read::take(tail.open()?, tail.len);
                backstop_filter::content::rfc5322_spooled(&head, file)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        }
        (None, None) => Ok(Ok(())),
    }
}
