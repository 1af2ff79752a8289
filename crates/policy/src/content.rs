//! The end of DATA, before the reply: RFC 5322 sanity, bounce provenance, SPF/DKIM/DMARC for
//! clients we do not trust (with an `Authentication-Results:` field for accepted mail), then
//! the configured content pipeline, which sees the message as it will be stored.

use backstop_filter::content::ContentAction;
use backstop_filter::pipeline::{Draft, Outcome};
use backstop_session::{ContentVerdict, Message};
use backstop_types::text::Escaped;
use backstop_types::{Reply, ReversePath, TrustClass};
use tracing::{info, warn};

use crate::{Sent, SitePolicy};

impl SitePolicy {
    /// Every check on a whole message, in order; the first that does not pass answers.
    pub(crate) async fn content(&self, message: &Message) -> ContentVerdict {
        match (
            self.rfc5322,
            backstop_filter::content::rfc5322(&message.body),
        ) {
            (ContentAction::Off, _) | (_, Ok(())) => {}
            (ContentAction::Reject, Err(v)) => {
                return ContentVerdict::Refuse(
                    Reply::content_refused(&v.to_string()).decided_by("rfc5322"),
                );
            }
            (ContentAction::Quarantine, Err(v)) => {
                return ContentVerdict::Quarantine(format!("RFC 5322: {v}"));
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
            if let Some(reply) = self.provenance(&message.body).await {
                return ContentVerdict::Refuse(reply);
            }
        }
        // Our own users' mail is not theirs to prove.
        let untrusted = envelope.trust == TrustClass::Unverified;
        let mut header = None;
        if let (Some(auth), true) = (&self.sender_auth, untrusted) {
            use backstop_filter::sender_auth::{Client, Outcome, Refusal};
            let client = Client {
                ip: envelope.client.ip,
                helo: &envelope.client.helo,
                sender: &envelope.sender,
            };
            let checked = auth.check(&client, &message.body).await;
            info!(results = %checked.summary, outcome = %checked.outcome, "sender authentication");
            let refusal = match checked.outcome {
                Outcome::Accept => None,
                Outcome::Refuse(Refusal::Dmarc { domain }) => Some(Reply::dmarc_rejected(&domain)),
                Outcome::Refuse(Refusal::Spf { domain }) => Some(Reply::spf_failed(&domain)),
                Outcome::Refuse(Refusal::Iprev { ip }) => Some(Reply::reverse_dns_failed(ip)),
                Outcome::Quarantine(reason) => return ContentVerdict::Quarantine(reason),
                Outcome::TempFail => Some(Reply::sender_auth_unavailable()),
            };
            if let Some(reply) = refusal {
                return ContentVerdict::Refuse(reply);
            }
            header = Some(checked.header);
        }
        if header.is_none() && self.content.is_empty() {
            return ContentVerdict::Accept;
        }
        // The checks see (and may change) the message as it will be stored.
        let mut body = header.as_deref().unwrap_or_default().as_bytes().to_vec();
        body.extend_from_slice(&message.body);
        let mut draft = Draft::new(envelope.clone(), body);
        draft.changed = header.is_some();
        match self.content.run(&mut draft).await {
            Outcome::Accept if draft.envelope.recipients.is_empty() => {
                ContentVerdict::Discard("a content check removed every recipient".into())
            }
            Outcome::Accept if draft.changed => ContentVerdict::AcceptChanged(Box::new(Message {
                envelope: draft.envelope,
                body: draft.message,
                proxied: message.proxied,
            })),
            Outcome::Accept => ContentVerdict::Accept,
            Outcome::Refuse(reply) => ContentVerdict::Refuse(reply),
            Outcome::Quarantine(reason) => ContentVerdict::Quarantine(reason),
            Outcome::Discard(reason) => ContentVerdict::Discard(reason),
        }
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
