//! The anti-backscatter policy: which in-session checks run, and in which order, so that every
//! decision that can be made while the client is connected is made then. The parts (the
//! recipient table, LDAP, greylisting, rate limits, DNSBL, SPF/DKIM/DMARC, the content
//! scanners) live in `backstop-filter`; this crate puts them in order and answers the
//! session's [`Policy`] questions with them.
//!
//! The order, stage by stage (each module holds one stage and documents it):
//! - connect ([`SitePolicy::allow_connection`]): the client connection rate.
//! - MAIL ([`sender`]): DNS blocklists, SPF at MAIL when asked, the message rate; trusted
//!   clients (local networks, authenticated users) skip the first two.
//! - RCPT ([`recipient`]): proxied and queued recipients never share a transaction; then BATV
//!   on bounces, the recipient table, the LDAP directory, greylisting, the recipient rate;
//!   then the relay of a proxied domain ([`proxy`]) or the next hop's own answer
//!   ([`callahead`]).
//! - end of DATA ([`content`]): RFC 5322 sanity, bounce provenance, SPF/DKIM/DMARC, then the
//!   configured content pipeline; a proxied message then goes to its relay.
//! - AUTH ([`auth`]): logins the users file does not know, from Dovecot or LDAP.
//!
//! A source that cannot answer is a 4xx (the client retries), never an accept.
//!
//! Network I/O here: only through the parts (DNS, LDAP, Dovecot, scanners) and the SMTP client
//! (callahead and proxy). State that outlives a session is the site's [`State`]; the time comes
//! from a [`Clock`].

pub mod auth;
pub mod bounce;
pub mod callahead;
pub mod content;
pub mod explain;
pub mod proxy;
pub mod recipient;
pub mod sender;
mod store;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;

use backstop_filter::content::ContentAction;
use backstop_filter::greylist::GreylistPolicy;
use backstop_filter::pipeline::Pipeline;
use backstop_filter::rate::RateLimits;
use backstop_filter::recipients::TableFile;
use backstop_listener::UserStore;
use backstop_session::{
    AuthOutcome, Checks, ContentVerdict, Message, Policy, RecipientQuery, RecipientVerdict,
    SenderQuery, SenderVerdict,
};
use backstop_state::{MemoryCounters, State};
use backstop_types::{Clock, Domain};

pub use bounce::BounceCheck;
pub use callahead::Callahead;
pub use proxy::Proxy;
pub use store::Sent;

/// The site's policy: every check it is configured with. The binary builds it from the
/// config; fields left `None` (or empty) are checks that are off.
pub struct SitePolicy {
    pub local_domains: Vec<Domain>,
    /// Refusing bounces without a valid BATV tag, and removing valid tags.
    pub batv: Option<BounceCheck>,
    /// The recipient table.
    pub recipients: Option<TableFile>,
    /// An LDAP directory of local recipients.
    pub ldap: Option<Arc<backstop_filter::ldap::LdapSource>>,
    pub greylist: Option<GreylistPolicy>,
    pub rate_limits: RateLimits,
    /// This node's own rate counters, which count when the site's state cannot; kept across
    /// reloads, as the site's state is.
    pub counters: Arc<MemoryCounters>,
    /// Recipient verification by asking the next hop.
    pub callahead: Option<Arc<Callahead>>,
    /// Domains passed through to their relay in-session.
    pub proxy: Option<Arc<Proxy>>,
    /// DNS blocklists for untrusted clients.
    pub dnsbl: Option<Arc<backstop_filter::dnsbl::Dnsbl>>,
    /// SPF, DKIM and DMARC for untrusted clients' mail.
    pub sender_auth: Option<Arc<backstop_filter::sender_auth::SenderAuth>>,
    pub rfc5322: ContentAction,
    /// Refuse bounces that return a message we never sent...
    pub bounce_provenance: bool,
    /// ...to these domains (empty: to the local domains).
    pub bounce_provenance_domains: Vec<Domain>,
    /// The configured content checks (`[[filter]]`), run last.
    pub content: Pipeline,
    /// The largest message the whole-message checks (sender authentication, `content`) read;
    /// a larger one is accepted unchecked by them, with a note in `Authentication-Results:`.
    pub max_scan_size: Option<u64>,
    /// The memory budget a spooled message is read into for those checks.
    pub memory: Arc<backstop_types::budget::MemoryBudget>,
    /// Our host name, the authserv-id of the notes we add.
    pub hostname: String,
    /// A directory for logins the users file does not know.
    pub auth_ldap: Option<Arc<backstop_filter::ldap::LdapSource>>,
    /// Dovecot's auth-client socket, for logins the users file does not know.
    pub auth_dovecot: Option<backstop_filter::dovecot::DovecotAuth>,
    /// The users, for the rights a login from elsewhere gets.
    pub users: Arc<UserStore>,
    /// The site's state: greylisting, rate counters, callahead answers and the sent-Message-ID
    /// index.
    pub state: Arc<dyn State>,
    pub clock: Arc<dyn Clock>,
}

/// What the policy keeps for one session.
#[derive(Default)]
pub struct SessionState {
    /// The transaction open at a proxied domain's relay.
    proxy: Option<proxy::Open>,
}

impl Policy for SitePolicy {
    type Session = SessionState;

    fn checks(&self) -> Checks {
        let limits = &self.rate_limits;
        Checks {
            senders: self.dnsbl.is_some()
                || self.sender_auth.as_ref().is_some_and(|a| a.spf_at_mail())
                || limits.user_messages.is_some()
                || limits.client_messages.is_some(),
            recipients: self.recipients.is_some()
                || self.ldap.is_some()
                || self.callahead.is_some()
                || self.proxy.is_some()
                || self.batv.is_some()
                || self.greylist.is_some()
                || limits.user_recipients.is_some()
                || limits.client_recipients.is_some(),
            messages: self.rfc5322 != ContentAction::Off
                || self.sender_auth.is_some()
                || self.bounce_provenance
                || !self.content.is_empty(),
        }
    }

    async fn allow_connection(&self, ip: IpAddr, local_submitter: bool) -> bool {
        match (&self.rate_limits.client_connections, local_submitter) {
            (Some(limit), false) => {
                let network = backstop_listener::limits::client_network(ip);
                self.count(&format!("conn:{network}"), limit).await
            }
            _ => true,
        }
    }

    fn open_session(&self) -> SessionState {
        SessionState::default()
    }

    async fn check_sender(&self, _: &mut SessionState, query: SenderQuery) -> SenderVerdict {
        self.sender(query).await
    }

    async fn check_recipient(
        &self,
        session: &mut SessionState,
        query: RecipientQuery,
    ) -> RecipientVerdict {
        self.recipient(session, query).await
    }

    async fn check_message(&self, session: &mut SessionState, message: &Message) -> ContentVerdict {
        let verdict = self.content(message).await;
        let (Some(txn), Some(proxy)) = (message.proxied, &self.proxy) else {
            return verdict;
        };
        // A proxied message our checks passed goes to the relay, whose reply is the client's.
        match verdict {
            ContentVerdict::Accept => proxy.data(&mut session.proxy, txn, message).await,
            ContentVerdict::AcceptChanged(changed) => {
                proxy.data(&mut session.proxy, txn, &changed).await
            }
            refused => {
                session.proxy = None;
                refused
            }
        }
    }

    async fn authenticate(
        &self,
        user: &str,
        password: &str,
        client: IpAddr,
        secured: bool,
    ) -> Option<AuthOutcome> {
        self.login(user, password, client, secured).await
    }
}
