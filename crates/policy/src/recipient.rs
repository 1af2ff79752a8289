//! RCPT TO: the order of the recipient checks, in one place ([`SitePolicy::recipient`]).
//!
//! 1. Proxied and queued recipients never share a transaction (`451 4.5.3`).
//! 2. BATV on bounces ([`crate::bounce`]): a bounce to a local address without a valid tag
//!    is refused (`550 5.7.1`); a valid tag is removed, for any sender, before any lookup.
//! 3. Does the recipient exist? The recipient table, then the LDAP directory: the first that
//!    knows the address answers; either one unavailable is `451 4.4.3`, never an accept.
//!    An unknown recipient is refused here, before greylisting, so it leaves no state.
//! 4. Greylisting, for clients we do not trust.
//! 5. The recipient rate (per user, or per client address; local networks are free).
//! 6. The next hop: the relay of a proxied domain answers for the recipient ([`crate::proxy`]);
//!    otherwise, where a route asks, the mailbox server or relay is asked
//!    ([`crate::callahead`]) for each address the recipient resolves to.

use backstop_filter::greylist::{self, GreyVerdict};
use backstop_filter::recipients::Verdict;
use backstop_session::{RecipientQuery, RecipientVerdict};
use backstop_types::text::Escaped;
use backstop_types::{Address, ReversePath};
use tracing::{info, warn};

use crate::{SessionState, SitePolicy};

impl SitePolicy {
    /// The recipient checks in their order (the module's list).
    pub(crate) async fn recipient(
        &self,
        session: &mut SessionState,
        query: RecipientQuery,
    ) -> RecipientVerdict {
        // 1. Proxied and queued recipients do not share a transaction.
        let proxied = self
            .proxy
            .as_ref()
            .and_then(|p| Some((p, p.route(query.recipient.domain())?)));
        match (proxied.is_some(), query.proxied) {
            (true, Some(false)) | (false, Some(true)) => {
                return RecipientVerdict::SeparateTransaction;
            }
            _ => {}
        }
        // 3 (its async part first). The directory is asked before the rest, which then
        // decides with its answer at hand.
        let directory = match (&self.ldap, query.local) {
            (Some(ldap), true) => match self.bounce_address(&query) {
                Ok(address) => Some(ldap.check(&address).await),
                Err(refused) => return refused,
            },
            _ => None,
        };
        // 2 to 5.
        let verdict = self.decide(&query, directory).await;
        // 6. Our own checks passed: the next hop answers.
        let RecipientVerdict::Accept(targets) = &verdict else {
            return verdict;
        };
        if let Some((proxy, route)) = proxied {
            return proxy.rcpt(&mut session.proxy, &query, route).await;
        }
        if let Some(callahead) = &self.callahead {
            for target in targets {
                let local = self.local_domains.contains(target.domain());
                match callahead
                    .check(&*self.state, target, local, query.size)
                    .await
                {
                    RecipientVerdict::Accept(_) => {}
                    refused => return refused,
                }
            }
        }
        verdict
    }

    /// Steps 2 to 5, with what the directory said (`None`: no directory, or not asked).
    pub(crate) async fn decide(
        &self,
        query: &RecipientQuery,
        directory: Option<Verdict>,
    ) -> RecipientVerdict {
        let address = match self.bounce_address(query) {
            Ok(address) => address,
            Err(refused) => return refused,
        };
        let address = &address;
        let from_table = match (&self.recipients, query.local) {
            (Some(file), true) => Some(file.table().check(address)),
            _ => None,
        };
        let targets = match answer(from_table, directory, address) {
            Verdict::Accept(targets) => targets,
            Verdict::Unknown => return RecipientVerdict::Unknown,
            Verdict::Unavailable(why) => {
                warn!(%address, why = %Escaped(&why), "recipient lookup failed");
                return RecipientVerdict::Unavailable;
            }
        };
        if let (Some(policy), false) = (&self.greylist, query.trusted) {
            let now = self.clock.now();
            let verdict = greylist::check(
                &*self.state,
                policy,
                query.client,
                &query.sender,
                address,
                now,
            )
            .await;
            match verdict {
                GreyVerdict::Pass => {}
                GreyVerdict::Defer { retry_after } => {
                    return RecipientVerdict::Defer { retry_after };
                }
                GreyVerdict::Unavailable(why) => {
                    warn!(%address, why = %Escaped(&why), "greylisting state unavailable");
                    return RecipientVerdict::Unavailable;
                }
            }
        }
        let limits = &self.rate_limits;
        let allowed = self
            .within_limits(
                "rcpt",
                (limits.user_recipients, limits.client_recipients),
                query.user.as_deref(),
                query.trusted,
                query.client,
            )
            .await;
        if !allowed {
            return RecipientVerdict::RateLimited;
        }
        RecipientVerdict::Accept(targets)
    }

    /// Step 2: the address a recipient is looked up as. A bounce (null sender) to a local
    /// address must carry a valid tag, which is removed; mail with a sender to a validly
    /// tagged address (an autoreply) has the tag removed too.
    pub(crate) fn bounce_address(
        &self,
        query: &RecipientQuery,
    ) -> Result<Address, RecipientVerdict> {
        match (&self.batv, &query.sender, query.local) {
            (Some(check), ReversePath::Null, true) if check.enforce => check
                .recipient(&query.recipient)
                .map_err(RecipientVerdict::NotOurBounce),
            (Some(check), _, true) => Ok(match check.untagged(&query.recipient) {
                Some(untagged) => {
                    info!(recipient = %query.recipient, to = %untagged, "a valid BATV tag removed from the recipient");
                    untagged
                }
                None => query.recipient.clone(),
            }),
            _ => Ok(query.recipient.clone()),
        }
    }
}

/// Step 3's answer from the table's and the directory's: the first that knows the address;
/// either one unavailable is unavailable; neither asked, the address as it is.
pub(crate) fn answer(
    from_table: Option<Verdict>,
    directory: Option<Verdict>,
    address: &Address,
) -> Verdict {
    match (from_table, directory) {
        (Some(Verdict::Accept(targets)), _) => Verdict::Accept(targets),
        (Some(Verdict::Unavailable(why)), _) | (_, Some(Verdict::Unavailable(why))) => {
            Verdict::Unavailable(why)
        }
        (_, Some(directory)) => directory,
        (Some(table), None) => table,
        (None, None) => Verdict::Accept(vec![address.clone()]),
    }
}
