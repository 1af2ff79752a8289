//! MAIL FROM: DNS blocklists and SPF (when asked at MAIL) for clients we do not trust, then the
//! message rate. Also the counting every rate limit shares.

use std::net::IpAddr;

use backstop_filter::rate::{self, Limit};
use backstop_session::{SenderQuery, SenderVerdict};
use backstop_types::Reply;
use tracing::warn;

use crate::SitePolicy;

impl SitePolicy {
    /// Whether to take a MAIL FROM. Trusted clients (local networks, authenticated users)
    /// skip the blocklists and SPF; everyone counts against the message rate.
    pub(crate) async fn sender(&self, query: SenderQuery) -> SenderVerdict {
        if let (Some(dnsbl), false) = (&self.dnsbl, query.trusted) {
            use backstop_filter::dnsbl::{ListAction, Listing};
            if let Listing::Listed {
                zone,
                action: ListAction::Reject,
                ..
            } = dnsbl.check(query.client).await
            {
                return SenderVerdict::Blocklisted { zone };
            }
        }
        if let (Some(auth), false) = (&self.sender_auth, query.trusted) {
            use backstop_filter::sender_auth::{Client, Outcome, Refusal};
            let client = Client {
                ip: query.client,
                helo: &query.helo,
                sender: &query.sender,
            };
            match auth.check_spf(&client).await {
                Outcome::Refuse(Refusal::Spf { domain }) => {
                    return SenderVerdict::Refused(Reply::spf_failed(&domain));
                }
                Outcome::TempFail => {
                    return SenderVerdict::Refused(Reply::sender_auth_unavailable());
                }
                _ => {}
            }
        }
        let limits = &self.rate_limits;
        let allowed = self.within_limits(
            "msg",
            (limits.user_messages, limits.client_messages),
            query.user.as_deref(),
            query.trusted,
            query.client,
        );
        if allowed {
            SenderVerdict::Accept
        } else {
            SenderVerdict::RateLimited
        }
    }

    /// Counts one event of `kind` for whoever sent it: an authenticated user against the user
    /// limit, an untrusted client address against the client limit; local networks are free.
    pub(crate) fn within_limits(
        &self,
        kind: &str,
        (user_limit, client_limit): (Option<Limit>, Option<Limit>),
        user: Option<&str>,
        trusted: bool,
        client: IpAddr,
    ) -> bool {
        match (user, trusted) {
            (Some(user), _) => {
                user_limit.is_none_or(|l| self.count(&format!("{kind}:user:{user}"), &l))
            }
            (None, true) => true,
            (None, false) => {
                client_limit.is_none_or(|l| self.count(&format!("{kind}:ip:{client}"), &l))
            }
        }
    }

    /// Counts one event against a limit; false when it goes over. A counter that fails lets
    /// the event through: rate limits shape traffic, they do not guard correctness.
    pub(crate) fn count(&self, key: &str, limit: &Limit) -> bool {
        match rate::allow(&*self.rates, key, limit, self.clock.now()) {
            Ok(allowed) => allowed,
            Err(e) => {
                warn!(error = %e, key, "rate counter failed");
                true
            }
        }
    }
}
