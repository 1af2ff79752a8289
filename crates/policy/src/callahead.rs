//! Recipient verification by asking the next hop while the client waits: the mailbox server
//! (LMTP to Dovecot, with the client's SIZE) or a relay. The next hop's refusal is the
//! client's reply. Answers are kept for a while in the site's [`State`] (quota answers for a minute
//! at most). A next hop that cannot answer means 451: never an accept on a failed lookup.

use std::time::Duration;

use backstop_session::RecipientVerdict;
use backstop_smtp_client::{NextHop, Settings};
use backstop_types::text::Escaped;
use backstop_types::{Address, Clock, Domain, EnhancedStatus, RemoteReply, Reply, UnixTime};
use std::sync::Arc;
use tracing::{info, warn};

use backstop_state::{Key, State};

/// The routes that ask, first match wins.
pub struct Callahead {
    pub routes: Vec<Route>,
    /// The sender of the probes.
    pub sender: Address,
    /// How long an answer is remembered.
    pub ttl: Ttl,
    pub clock: Arc<dyn Clock>,
}

/// A route whose next hop is asked.
pub struct Route {
    pub domains: Vec<Domain>,
    /// `*`: any domain but a local one.
    pub any_domain: bool,
    pub hop: NextHop,
    pub client: Settings,
}

/// How long an answer is remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl {
    /// The recipient exists.
    pub positive: Duration,
    /// The recipient is refused there.
    pub negative: Duration,
}

/// How long a mailbox server's answer about a full mailbox is kept at most: it changes as
/// soon as its owner deletes mail.
pub const QUOTA_TTL: Duration = Duration::from_secs(60);

impl Callahead {
    /// The route whose next hop is asked about a recipient in `domain` (a local one when
    /// `local`), if one is.
    pub fn route_for(&self, domain: &Domain, local: bool) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.domains.contains(domain) || (r.any_domain && !local))
    }

    /// Asks about `recipient` (of a local domain when `local`: only a route that names the
    /// domain asks; a `*` route never takes a local domain).
    pub async fn check(
        &self,
        store: &dyn State,
        recipient: &Address,
        local: bool,
        size: Option<u64>,
    ) -> RecipientVerdict {
        let Some(route) = self.route_for(recipient.domain(), local) else {
            return RecipientVerdict::Accept(vec![recipient.clone()]);
        };
        let key = Key::Callahead(recipient.to_string().to_ascii_lowercase());
        let now = self.clock.now();
        match store.get(&key, now).await {
            Ok(Some(answer)) => {
                if let Some(verdict) = remembered(&answer, recipient) {
                    return verdict;
                }
            }
            Ok(None) => {}
            // The answers are the site's: without them every node would ask the next hop for
            // every recipient. Try later, as for any check that cannot answer.
            Err(e) => {
                warn!(%recipient, error = %e, state = %store.describe(), "callahead answers unavailable: 451");
                return RecipientVerdict::Unavailable;
            }
        }
        let probe =
            backstop_smtp_client::probe(&route.hop, &route.client, &self.sender, recipient, size)
                .await;
        let quota = |reply: &RemoteReply| reply.status.is_some_and(|s| s.1 == 2 && s.2 == 2);
        let (verdict, remember) = match probe {
            Ok(reply) if reply.code / 100 == 2 => (
                RecipientVerdict::Accept(vec![recipient.clone()]),
                Some(("+".to_owned(), self.ttl.positive)),
            ),
            Ok(reply) if reply.code / 100 == 5 || quota(&reply) => {
                info!(%recipient, code = reply.code, reply = %Escaped(&reply.text), "callahead: the next hop refuses the recipient");
                let ttl = if quota(&reply) {
                    self.ttl.negative.min(QUOTA_TTL)
                } else {
                    self.ttl.negative
                };
                let stored = format!(
                    "!{} {} {}",
                    reply.code,
                    reply.status.map(|s| s.to_string()).unwrap_or_default(),
                    reply.text.replace('\n', " ")
                );
                (
                    RecipientVerdict::NextHopRefused(Reply::from_next_hop(
                        reply.code,
                        reply.status,
                        &reply.text,
                    )),
                    Some((stored, ttl)),
                )
            }
            Ok(reply) => {
                warn!(%recipient, code = reply.code, reply = %Escaped(&reply.text), "callahead: the next hop cannot answer now: 451");
                (RecipientVerdict::Unavailable, None)
            }
            Err(e) => {
                warn!(%recipient, error = %e, "callahead failed: 451");
                (RecipientVerdict::Unavailable, None)
            }
        };
        if let Some((answer, ttl)) = remember {
            let expires = UnixTime(now.0 + ttl.as_secs());
            if let Err(e) = store.put(&key, answer.as_bytes(), expires, now).await {
                warn!(error = %e, "callahead answer not kept");
            }
        }
        verdict
    }
}

/// A cached callahead answer: `+` (exists), `-` (unknown, as earlier versions kept it), or
/// `!code status text` (the next hop's refusal).
fn remembered(answer: &[u8], recipient: &Address) -> Option<RecipientVerdict> {
    match answer {
        b"+" => Some(RecipientVerdict::Accept(vec![recipient.clone()])),
        b"-" => Some(RecipientVerdict::Unknown),
        [b'!', rest @ ..] => {
            let text = std::str::from_utf8(rest).ok()?;
            let (code, rest) = text.split_once(' ')?;
            let (status, text) = rest.split_once(' ')?;
            let status = {
                let mut parts = status.split('.').map(|p| p.parse::<u16>().ok());
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(Some(c)), Some(Some(s)), Some(Some(d))) => {
                        Some(EnhancedStatus(c as u8, s, d))
                    }
                    _ => None,
                }
            };
            Some(RecipientVerdict::NextHopRefused(Reply::from_next_hop(
                code.parse().ok()?,
                status,
                text,
            )))
        }
        _ => None,
    }
}
