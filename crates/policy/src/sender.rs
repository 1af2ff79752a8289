//! MAIL FROM: DNS blocklists and SPF (when asked at MAIL) for clients we do not trust, then the
//! message rate. Also the counting every rate limit shares.

use std::net::IpAddr;

use backstop_filter::rate::Limit;
use backstop_session::{SenderQuery, SenderVerdict};
use backstop_state::Key;
use backstop_types::text::Escaped;
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
        let allowed = self
            .within_limits(
                "msg",
                (limits.user_messages, limits.client_messages),
                query.user.as_deref(),
                query.trusted,
                query.client,
            )
            .await;
        if allowed {
            SenderVerdict::Accept
        } else {
            SenderVerdict::RateLimited
        }
    }

    /// Counts one event of `kind` for whoever sent it: an authenticated user against the user
    /// limit, an untrusted client address against the client limit (an IPv6 client as its
    /// /64, as for connection slots); local networks are free.
    pub(crate) async fn within_limits(
        &self,
        kind: &str,
        (user_limit, client_limit): (Option<Limit>, Option<Limit>),
        user: Option<&str>,
        trusted: bool,
        client: IpAddr,
    ) -> bool {
        match (user, trusted, user_limit, client_limit) {
            (Some(user), _, Some(limit), _) => {
                self.count(&format!("{kind}:user:{user}"), &limit).await
            }
            (None, false, _, Some(limit)) => {
                let network = backstop_listener::limits::client_network(client);
                self.count(&format!("{kind}:ip:{network}"), &limit).await
            }
            _ => true,
        }
    }

    /// Counts one event against a limit in the site's state; false when it goes over. When
    /// the site's state does not answer, this node's own counter counts instead (with a
    /// warning): a limit then holds per node, never lets everything through, and never refuses
    /// mail for the store's sake.
    pub(crate) async fn count(&self, name: &str, limit: &Limit) -> bool {
        let key = Key::Rate(name.to_owned());
        let now = self.clock.now();
        let count = match self.state.add_in_window(&key, 1, limit.window, now).await {
            Ok(count) => count,
            Err(e) => {
                warn!(error = %e, key = %Escaped(name), state = %self.state.describe(), "rate counter of the site unavailable: this node's own counts");
                self.counters.add(&key, 1, limit.window, now)
            }
        };
        count <= limit.count
    }
}
