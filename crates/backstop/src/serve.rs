//! `backstop serve`: builds every part from the config and runs until SIGTERM or SIGINT.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use backstop_filter::greylist::{self, GreyStore, GreyVerdict, GreylistPolicy};
use backstop_filter::pipeline::{Draft, Outcome as PipelineOutcome, Pipeline};
use backstop_filter::rate::{self, Limit, MemoryRates};
use backstop_filter::recipients::{TableFile, Verdict};
use backstop_listener::tls::{CertSource, Made};
use backstop_listener::{
    ConnectionLimits, Context, Listener, ListenerMode, MessageSink, Policy, UserStore,
};
use backstop_queue::{Queue, QueueError};
use backstop_session::{
    AuthOutcome, AuthPolicy, BounceProblem, ContentVerdict, EnqueueFailure, Message,
    RecipientQuery, RecipientVerdict, SenderQuery, SenderVerdict, SessionConfig,
};
use backstop_types::text::Escaped;
use backstop_types::{Address, QueueId, Reply, ReversePath};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use backstop_config::{Config, ContentAction, ListenerKind, RateLimits, Tls};

use crate::load::Setup;

/// Tells the operator something on standard output (where it listens, where data lives).
/// A write error is ignored: a daemon must not die because its stdout was closed (a finished
/// pipe reader, a detached terminal), as `println!` would make it.
macro_rules! announce {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
pub(crate) use announce;

/// Runs the server on `config`, read from `path` (the embedded default when `None`), which
/// SIGHUP reads again.
pub fn run(setup: Setup, path: Option<PathBuf>) -> anyhow::Result<()> {
    // Everything the server creates is its own: the queue (messages and their log), Maildir
    // files, keys, the admin socket. Nothing inherits a umask that lets other local users read
    // mail (Postfix's queue is private the same way).
    // SAFETY: umask has no preconditions; it is called before any thread exists.
    unsafe { libc::umask(0o077) };
    let log = init_tracing(&setup.config.log)?;
    for warning in &setup.config.warnings {
        warn!(%warning, "config");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(setup, path, log))
}

/// The running log: its format, and a handle that changes its level on reload.
pub(crate) struct LogControl {
    /// `None` when RUST_LOG decides the level (a reload then leaves it).
    level: Option<
        tracing_subscriber::reload::Handle<
            tracing_subscriber::EnvFilter,
            tracing_subscriber::Registry,
        >,
    >,
}

impl LogControl {
    /// Logs at `level` from now on (checked by the config already).
    fn set_level(&self, level: &str) {
        let Some(handle) = &self.level else {
            info!("log.level changed, but RUST_LOG decides the level: it stays");
            return;
        };
        match tracing_subscriber::EnvFilter::try_new(level) {
            Ok(filter) => match handle.reload(filter) {
                Ok(()) => info!(level, "log level changed"),
                Err(e) => error!(error = %e, "log level not changed"),
            },
            Err(e) => error!(error = %e, level, "log level not changed"),
        }
    }
}

fn init_tracing(log: &backstop_config::Log) -> anyhow::Result<LogControl> {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    let from_env = std::env::var("RUST_LOG").ok().filter(|e| !e.is_empty());
    let filter = match &from_env {
        Some(env) => tracing_subscriber::EnvFilter::try_new(env)
            .with_context(|| format!("RUST_LOG {env:?} is not a tracing filter"))?,
        None => tracing_subscriber::EnvFilter::try_new(&log.level)
            .with_context(|| format!("log.level {:?} is not a tracing filter", log.level))?,
    };
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match log.json {
        // One object per line: the event's fields, and the spans it happened in (the
        // session's id, peer and listener; the delivery's queue id).
        true => registry.with(fmt.json().with_span_list(true)).init(),
        false => registry
            .with(fmt.with_ansi(std::io::stderr().is_terminal()))
            .init(),
    }
    Ok(LogControl {
        level: from_env.is_none().then_some(handle),
    })
}

/// Answers the session's in-session checks from the filter.
struct Filter {
    /// For refusing bounces without a valid tag; `None` when that check is off.
    batv: Option<BounceCheck>,
    /// Refuse bounces that return a message we never sent...
    bounce_provenance: bool,
    /// ...to these domains (empty: to the local domains).
    bounce_provenance_domains: Vec<backstop_types::Domain>,
    local_domains: Vec<backstop_types::Domain>,
    /// An LDAP directory of local recipients; `None` when not configured.
    ldap: Option<Arc<backstop_filter::ldap::LdapSource>>,
    /// A directory for logins the users file does not know, and the users (for the rights
    /// such a login gets).
    auth_ldap: Option<Arc<backstop_filter::ldap::LdapSource>>,
    /// Dovecot's auth-client socket, for logins the users file does not know.
    auth_dovecot: Option<backstop_filter::dovecot::DovecotAuth>,
    users: Arc<UserStore>,
    /// Recipient verification by asking the next hop; `None` when no route asks.
    callahead: Option<Arc<Callahead>>,
    /// Domains passed through to their relay in-session; `None` when no route says proxy.
    proxy: Option<Arc<crate::proxy::Proxy>>,
    /// DNS blocklists for untrusted clients; `None` when none is configured.
    dnsbl: Option<Arc<backstop_filter::dnsbl::Dnsbl>>,
    /// SPF, DKIM and DMARC for untrusted clients' mail; `None` when off.
    sender_auth: Option<Arc<backstop_filter::sender_auth::SenderAuth>>,
    rfc5322: ContentAction,
    /// The configured content checks (`[[filter]]`), run last.
    content: Pipeline,
    recipients: Option<TableFile>,
    greylist: Option<GreylistPolicy>,
    rate_limits: RateLimits,
    /// Kept across reloads, so a reload resets no limit.
    rates: Arc<MemoryRates>,
    queue: Queue,
}

impl Policy for Filter {
    async fn check_message(&self, message: &Message) -> ContentVerdict {
        let verdict = self.check_content(message).await;
        let (Some(txn), Some(proxy)) = (message.proxied, &self.proxy) else {
            return verdict;
        };
        // A proxied message our checks passed goes to the relay, whose reply is the client's.
        match verdict {
            ContentVerdict::Accept => proxy.data(txn, message).await,
            ContentVerdict::AcceptChanged(changed) => proxy.data(txn, &changed).await,
            refused => {
                proxy.end(txn.session);
                refused
            }
        }
    }

    fn session_ended(&self, session: u64) {
        if let Some(proxy) = &self.proxy {
            proxy.end(session);
        }
    }

    async fn authenticate(
        &self,
        user: &str,
        password: &str,
        client: std::net::IpAddr,
        secured: bool,
    ) -> Option<AuthOutcome> {
        if let Some(dovecot) = &self.auth_dovecot {
            use backstop_filter::dovecot::Login;
            return Some(
                match dovecot.authenticate(user, password, client, secured).await {
                    Ok(Login::Valid { user: canonical }) => {
                        AuthOutcome::Success(self.users.rights_of_other(&canonical, &[]))
                    }
                    Ok(Login::Invalid) => AuthOutcome::Failure,
                    Err(e) => {
                        warn!(user = %Escaped(user), error = %Escaped(&e), "Dovecot cannot answer: 454");
                        AuthOutcome::TemporaryFailure
                    }
                },
            );
        }
        use backstop_filter::ldap::Login;
        let directory = self.auth_ldap.as_ref()?;
        Some(match directory.authenticate(user, password).await {
            Ok(Login::Valid(addresses)) => {
                AuthOutcome::Success(self.users.rights_of_other(user, &addresses))
            }
            Ok(Login::Invalid) => AuthOutcome::Failure,
            Err(e) => {
                warn!(user = %Escaped(user), error = %Escaped(&e), "login directory cannot answer: 454");
                AuthOutcome::TemporaryFailure
            }
        })
    }

    fn allow_connection(&self, ip: std::net::IpAddr, local_submitter: bool) -> bool {
        match (&self.rate_limits.client_connections, local_submitter) {
            (Some(limit), false) => self.count(&format!("conn:{ip}"), limit),
            _ => true,
        }
    }

    async fn check_sender(&self, query: SenderQuery) -> SenderVerdict {
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

    async fn check_recipient(&self, query: RecipientQuery) -> RecipientVerdict {
        // Proxied and queued recipients do not share a transaction.
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
        // The directory is asked first (it is async); the table, greylisting and rate limits
        // then decide with its answer at hand.
        let directory = match (&self.ldap, query.local) {
            (Some(ldap), true) => match self.bounce_address(&query) {
                Ok(address) => Some(ldap.check(&address).await),
                Err(refused) => return refused,
            },
            _ => None,
        };
        let verdict = self.decide_with(&query, directory);
        // Our own checks passed: the relay of a proxied domain answers for the recipient.
        if let (RecipientVerdict::Accept(_), Some((proxy, route))) = (&verdict, proxied) {
            return proxy.rcpt(&query, route).await;
        }
        match (&verdict, &self.callahead) {
            (RecipientVerdict::Accept(targets), Some(callahead)) => {
                for target in targets {
                    let local = self.local_domains.contains(target.domain());
                    match callahead
                        .check(&self.queue, target, local, query.size)
                        .await
                    {
                        RecipientVerdict::Accept(_) => {}
                        refused => return refused,
                    }
                }
                verdict
            }
            _ => verdict,
        }
    }
}

impl Filter {
    /// Every check on a whole message before the reply to DATA: RFC 5322 sanity, bounce
    /// provenance, sender authentication, then the content pipeline.
    async fn check_content(&self, message: &Message) -> ContentVerdict {
        match (
            self.rfc5322,
            backstop_filter::content::rfc5322(&message.body),
        ) {
            (ContentAction::Off, _) | (_, Ok(())) => {}
            (ContentAction::Reject, Err(v)) => {
                return ContentVerdict::Refuse(Reply::content_refused(&v.to_string()));
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
            if let Some(reply) = self.provenance(&message.body) {
                return ContentVerdict::Refuse(reply);
            }
        }
        // Our own users' mail is not theirs to prove.
        let untrusted = envelope.trust == backstop_types::TrustClass::Unverified;
        let mut header = None;
        if let (Some(auth), true) = (&self.sender_auth, untrusted) {
            use backstop_filter::sender_auth::{Client, Outcome, Refusal};
            let client = Client {
                ip: envelope.client.ip,
                helo: &envelope.client.helo,
                sender: &envelope.sender,
            };
            let checked = auth.check(&client, &message.body).await;
            info!(results = %checked.summary, outcome = ?checked.outcome, "sender authentication");
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
            PipelineOutcome::Accept if draft.envelope.recipients.is_empty() => {
                ContentVerdict::Discard("a content check removed every recipient".into())
            }
            PipelineOutcome::Accept if draft.changed => {
                ContentVerdict::AcceptChanged(Box::new(Message {
                    envelope: draft.envelope,
                    body: draft.message,
                    proxied: message.proxied,
                }))
            }
            PipelineOutcome::Accept => ContentVerdict::Accept,
            PipelineOutcome::Refuse(reply) => ContentVerdict::Refuse(reply),
            PipelineOutcome::Quarantine(reason) => ContentVerdict::Quarantine(reason),
            PipelineOutcome::Discard(reason) => ContentVerdict::Discard(reason),
        }
    }

    /// The refusal for a bounce returning a message we never sent; `None` to go on: it is ours,
    /// it returns nothing we could look up, or we have never sent anything to compare with.
    fn provenance(&self, body: &[u8]) -> Option<Reply> {
        let id = backstop_filter::provenance::returned_message_id(body)?;
        match (
            self.queue.sent_message_ids_empty(),
            self.queue
                .sent_message_id(backstop_queue::message_id_hash(&id)),
        ) {
            (Ok(false), Ok(None)) => {
                info!(message_id = %Escaped(&id), "bounce returns a message we never sent: 550");
                Some(Reply::bounce_not_ours())
            }
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "sent Message-ID index unreadable: bounce accepted");
                None
            }
            _ => None,
        }
    }

    /// Counts one event of `kind` for whoever sent it: an authenticated user against the user
    /// limit, an untrusted client address against the client limit; local networks are free.
    fn within_limits(
        &self,
        kind: &str,
        (user_limit, client_limit): (Option<Limit>, Option<Limit>),
        user: Option<&str>,
        trusted: bool,
        client: std::net::IpAddr,
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
    fn count(&self, key: &str, limit: &Limit) -> bool {
        match rate::allow(&*self.rates, key, limit, now()) {
            Ok(allowed) => allowed,
            Err(e) => {
                warn!(error = %e, key, "rate counter failed");
                true
            }
        }
    }

    /// Recipient validation first (an unknown recipient is refused at once and leaves no
    /// greylisting state), then greylisting for clients we do not trust, then the recipient
    /// rate limits.
    /// The address a recipient is looked up as: a bounce's BATV tag checked and stripped.
    /// A bounce (null sender) to a local address must carry a valid tag, which is removed;
    /// mail with a sender to a validly tagged address (an autoreply) has the tag removed too.
    fn bounce_address(&self, query: &RecipientQuery) -> Result<Address, RecipientVerdict> {
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

    #[cfg(test)]
    fn decide(&self, query: &RecipientQuery) -> RecipientVerdict {
        self.decide_with(query, None)
    }

    /// The decision, with what the directory said (`None`: no directory, or not asked). The
    /// sources answer in order, first match wins: the table, then the directory.
    fn decide_with(&self, query: &RecipientQuery, directory: Option<Verdict>) -> RecipientVerdict {
        let address = match self.bounce_address(query) {
            Ok(address) => address,
            Err(refused) => return refused,
        };
        let address = &address;
        let from_table = match (&self.recipients, query.local) {
            (Some(file), true) => Some(file.table().check(address)),
            _ => None,
        };
        let answer = match (from_table, directory) {
            (Some(Verdict::Accept(targets)), _) => Verdict::Accept(targets),
            (Some(Verdict::Unavailable(why)), _) | (_, Some(Verdict::Unavailable(why))) => {
                Verdict::Unavailable(why)
            }
            (_, Some(directory)) => directory,
            (Some(table), None) => table,
            (None, None) => Verdict::Accept(vec![address.clone()]),
        };
        let targets = match answer {
            Verdict::Accept(targets) => targets,
            Verdict::Unknown => return RecipientVerdict::Unknown,
            Verdict::Unavailable(why) => {
                warn!(%address, why = %Escaped(&why), "recipient lookup failed");
                return RecipientVerdict::Unavailable;
            }
        };
        if let (Some(policy), false) = (&self.greylist, query.trusted) {
            let now = now();
            let store = QueueGreyStore(&self.queue);
            match greylist::check(&store, policy, query.client, &query.sender, address, now) {
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
        let allowed = self.within_limits(
            "rcpt",
            (limits.user_recipients, limits.client_recipients),
            query.user.as_deref(),
            query.trusted,
            query.client,
        );
        if !allowed {
            return RecipientVerdict::RateLimited;
        }
        RecipientVerdict::Accept(targets)
    }
}

/// The time now, for the checks and jobs of the binary.
pub(crate) fn now() -> backstop_types::UnixTime {
    backstop_types::UnixTime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// Greylisting state in the queue's key-value area.
struct QueueGreyStore<'a>(&'a Queue);

impl GreyStore for QueueGreyStore<'_> {
    fn get(&self, key: &[u8], now: backstop_types::UnixTime) -> Result<Option<Vec<u8>>, String> {
        self.0.state_get(key, now).map_err(|e| e.to_string())
    }

    fn put(
        &self,
        key: &[u8],
        value: &[u8],
        expires: backstop_types::UnixTime,
    ) -> Result<(), String> {
        self.0
            .state_put(key, value, expires)
            .map_err(|e| e.to_string())
    }
}

/// The SMTP side's shared state: the queue as the sink, the filter as the policy.
type SmtpContext = Context<QueueSink, Filter>;

/// Reloads the recipient table in force whenever its file changes (polled every two seconds;
/// SIGHUP reloads it with the rest). A table that fails to load is logged; the one in force
/// stays.
async fn watch_recipients(contexts: watch::Receiver<Arc<SmtpContext>>) {
    let mut poll = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        poll.tick().await;
        let Some(file) = contexts.borrow().policy.recipients.clone() else {
            continue;
        };
        match file.reload_if_changed() {
            Ok(true) => info!(table = %file.path().display(), "recipient table reloaded"),
            Ok(false) => {}
            Err(e) => error!(error = %e, "recipient table not reloaded; the previous one stays"),
        }
    }
}

/// What a reload builds the new server parts from, and where it sends them.
struct Reloader {
    /// The config file; the embedded default when `None`.
    path: Option<PathBuf>,
    data_dir: PathBuf,
    queue: Queue,
    metrics: Arc<backstop_listener::metrics::SmtpMetrics>,
    counters: Arc<backstop_delivery::report::Counters>,
    /// The SMTP side, for new sessions.
    contexts: watch::Sender<Arc<SmtpContext>>,
    /// The delivery agent's settings, for its next pass.
    agents: watch::Sender<backstop_delivery::agent::Agent>,
    /// Where we listen: never a next hop.
    own: Arc<backstop_delivery::own::OwnAddresses>,
    log: LogControl,
}

/// On SIGHUP: reads the config again and, if it is good and keeps what needs a restart, builds
/// the SMTP side anew (session rules, checks, users, certificates, tables, keys) for the
/// sessions that start from then on, and the delivery agent's settings (routes, DKIM and BATV
/// keys, limits, retries) for its next pass. Sessions already open finish under the rules they
/// started with, a delivery pass in progress under its settings. A bad config is logged and
/// changes nothing.
async fn reload_on_hangup(
    hangup: Option<tokio::signal::unix::Signal>,
    mut running: Setup,
    r: Reloader,
) {
    let Some(mut hangup) = hangup else {
        return std::future::pending().await;
    };
    while hangup.recv().await.is_some() {
        let setup = match crate::load::load(r.path.as_deref()) {
            Ok(setup) => setup,
            Err(errors) => {
                for e in &errors.0 {
                    error!(error = %e, "config");
                }
                error!(
                    errors = errors.0.len(),
                    "reload refused: the config has errors; nothing changed"
                );
                continue;
            }
        };
        if let Some(why) = needs_restart(&running, &setup) {
            error!(
                why,
                "reload refused: this change needs a restart; nothing changed"
            );
            continue;
        }
        let previous = Arc::clone(&r.contexts.borrow());
        let built = Shared::new(&setup).and_then(|shared| {
            let tls = load_tls(&setup.config, &r.data_dir)?;
            let context =
                smtp_context(&setup, tls, &shared, &r.queue, &r.metrics, Some(&previous))?;
            let maildir = std::path::absolute(&setup.config.delivery.maildir)?;
            let agent = delivery_agent(
                &setup,
                &r.queue,
                maildir,
                Arc::clone(&r.counters),
                &shared,
                &r.own,
            )?;
            Ok((context, agent))
        });
        match built {
            Ok((context, agent)) => {
                r.contexts.send_replace(Arc::new(context));
                r.agents.send_replace(agent);
                if setup.config.log.level != running.config.log.level {
                    r.log.set_level(&setup.config.log.level);
                }
                for warning in &setup.config.warnings {
                    warn!(%warning, "config");
                }
                running = setup;
                info!("config reloaded");
            }
            Err(e) => error!(error = %format!("{e:#}"), "reload refused; nothing changed"),
        }
    }
}

/// Why `new` cannot replace `old` without a restart, if it cannot: the sockets and the data
/// directory are set up once.
fn needs_restart(old: &Setup, new: &Setup) -> Option<&'static str> {
    if old.admin != new.admin {
        return Some("the admin API's endpoint changed");
    }
    let (old, new) = (&old.config, &new.config);
    if old.log.json != new.log.json {
        return Some("log.format changed");
    }
    let listeners = |c: &Config| -> Vec<(String, std::net::SocketAddr, &'static str)> {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.address, l.kind.name()))
            .collect()
    };
    if listeners(old) != listeners(new) {
        return Some("the listeners changed");
    }
    if old.data_dir != new.data_dir {
        return Some("data_dir changed");
    }
    if old.metrics != new.metrics {
        return Some("the metrics address changed");
    }
    if old.delivery.paused != new.delivery.paused {
        return Some("delivery.paused changed");
    }
    None
}

/// The server's certificate: the configured files, or a self-signed one, made again when it
/// expires soon or names another host.
fn load_tls(
    config: &Config,
    data_dir: &Path,
) -> anyhow::Result<backstop_listener::tls::TlsAcceptor> {
    let source = match &config.tls {
        Tls::Files { cert, key } => CertSource::Files {
            cert: cert.value.clone(),
            key: key.value.clone(),
        },
        Tls::SelfSigned => CertSource::SelfSigned {
            dir: data_dir.join("tls"),
            hostname: config.hostname.clone(),
        },
    };
    let tls = backstop_listener::tls::load(&source, now())?;
    if let Some(cert) = &tls.self_signed {
        let path = cert.cert.display();
        let not_after = cert.not_after.to_rfc5322();
        match &cert.made {
            Made::Now => warn!(
                %path,
                hostname = %config.hostname,
                %not_after,
                "no certificate configured: generated a self-signed certificate"
            ),
            Made::Renewed(reason) => warn!(
                %path,
                hostname = %config.hostname,
                %not_after,
                %reason,
                "no certificate configured: renewed the self-signed certificate (same key)"
            ),
            Made::Earlier => warn!(
                %path,
                %not_after,
                "no certificate configured: using the self-signed certificate generated earlier"
            ),
        }
    }
    Ok(tls.acceptor)
}

/// The SMTP side built from `config`: the filter, the users, the certificate, the limits and
/// each listener's session rules. With `previous` (a reload), the counts of open connections,
/// the rate-limit windows and an unchanged recipient table (read again) carry over.
fn smtp_context(
    setup: &Setup,
    tls: backstop_listener::tls::TlsAcceptor,
    shared: &Shared,
    queue: &Queue,
    metrics: &Arc<backstop_listener::metrics::SmtpMetrics>,
    previous: Option<&SmtpContext>,
) -> anyhow::Result<SmtpContext> {
    let config = &setup.config;
    let users = Arc::clone(&setup.users);
    if matches!(users.verify("demo", "demo"), AuthOutcome::Success(_)) {
        warn!("user demo with password demo (from the default config) can log in: remove it for real use");
    }
    let (max_total, max_per_ip) = (
        config.smtp.max_connections,
        config.smtp.max_connections_per_ip,
    );
    let limits = match previous {
        Some(p) => p.limits.resized(max_total, max_per_ip),
        None => ConnectionLimits::new(max_total, max_per_ip),
    };
    let recipients = match (
        &setup.recipients,
        previous.and_then(|p| p.policy.recipients.as_ref()),
    ) {
        (Some(new), Some(old)) if new.path() == old.path() => {
            old.reload()?;
            Some(old.clone())
        }
        (new, _) => new.clone(),
    };
    let listeners = config
        .listeners
        .iter()
        .map(|l| {
            let settings = backstop_listener::ListenerSettings {
                session: Arc::new(session_config(config, &l.name, l.kind)),
                greeting_delay: config.smtp.greeting_delay,
                shutdown_grace: config.smtp.shutdown_grace,
                stress_timeout: config.smtp.stress_timeout,
            };
            (l.name.clone(), settings)
        })
        .collect();
    Ok(Context {
        sink: QueueSink {
            queue: queue.clone(),
        },
        policy: Filter {
            bounce_provenance_domains: config.bounce_provenance_domains.clone(),
            local_domains: config.smtp.local_domains.clone(),
            ldap: setup
                .ldap
                .clone()
                .map(|l| Arc::new(backstop_filter::ldap::LdapSource::new(l))),
            auth_ldap: setup
                .auth_ldap
                .clone()
                .map(|l| Arc::new(backstop_filter::ldap::LdapSource::new(l))),
            auth_dovecot: config.auth.dovecot.clone(),
            users: Arc::clone(&users),
            callahead: callahead(setup),
            proxy: proxy(setup),
            bounce_provenance: config.bounce_provenance,
            dnsbl: match (&shared.dns, config.dnsbl.is_empty()) {
                (Some(dns), false) => Some(Arc::new(backstop_filter::dnsbl::Dnsbl::new(
                    dns.clone(),
                    config.dnsbl.clone(),
                ))),
                _ => None,
            },
            sender_auth: match (&shared.dns, &config.sender_checks) {
                (Some(dns), Some(actions)) => {
                    Some(Arc::new(backstop_filter::sender_auth::SenderAuth::new(
                        dns.clone(),
                        &config.hostname,
                        actions.clone(),
                    )))
                }
                _ => None,
            },
            batv: match (&shared.batv, &config.batv) {
                (Some(keys), Some(batv)) => Some(BounceCheck {
                    keys: keys.clone(),
                    enforce: batv.check_bounces,
                    exempt: batv.exempt.clone(),
                }),
                _ => None,
            },
            rfc5322: config.rfc5322,
            content: Pipeline {
                checks: config.content_checks.clone(),
                deadline: config.content_deadline,
            },
            recipients,
            greylist: config.greylist,
            rate_limits: config.rate_limits.clone(),
            rates: previous.map_or_else(Arc::default, |p| Arc::clone(&p.policy.rates)),
            queue: queue.clone(),
        },
        tls: Some(tls),
        users,
        limits,
        auth_limits: match previous {
            Some(p) => Arc::new(p.auth_limits.resized(config.auth.limits)),
            None => Arc::new(backstop_listener::auth_limits::AuthLimits::new(
                config.auth.limits,
            )),
        },
        local_networks: config.smtp.local_networks.clone(),
        metrics: Arc::clone(metrics),
        listeners,
    })
}

/// Puts accepted messages into the queue.
struct QueueSink {
    queue: Queue,
}

impl MessageSink for QueueSink {
    fn quarantine(
        &self,
        message: Message,
        reason: String,
    ) -> impl Future<Output = Result<QueueId, EnqueueFailure>> + Send {
        let queue = self.queue.clone();
        async move {
            let store = move || queue.quarantine_new(&message.envelope, &message.body, &reason);
            match tokio::task::spawn_blocking(store).await {
                Ok(Ok(id)) => Ok(id),
                Ok(Err(QueueError::DiskFull(e))) => {
                    error!(error = %e, "quarantine write failed");
                    Err(EnqueueFailure::StorageFull)
                }
                Ok(Err(e)) => {
                    error!(error = %e, "quarantine write failed");
                    Err(EnqueueFailure::Unavailable)
                }
                Err(e) => {
                    error!(error = %e, "quarantine write task failed");
                    Err(EnqueueFailure::Unavailable)
                }
            }
        }
    }

    fn enqueue(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<QueueId, EnqueueFailure>> + Send {
        let queue = self.queue.clone();
        async move {
            queue
                .enqueue(&message.envelope, message.body)
                .await
                .map_err(|e| {
                    error!(error = %e, "queue write failed");
                    match e {
                        QueueError::DiskFull(_) => EnqueueFailure::StorageFull,
                        _ => EnqueueFailure::Unavailable,
                    }
                })
        }
    }
}

async fn serve(setup: Setup, path: Option<PathBuf>, log: LogControl) -> anyhow::Result<()> {
    let signals = Signals::install();
    let config = &setup.config;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let data_dir = config
        .data_dir
        .canonicalize()
        .with_context(|| format!("data directory {}", config.data_dir.display()))?;
    let queue_dir = data_dir.join("queue");
    let queue = Queue::open(&queue_dir)?;
    announce!(
        "backstop {}: queue in {}",
        env!("CARGO_PKG_VERSION"),
        queue_dir.display()
    );

    let tls = load_tls(config, &data_dir)?;

    // The admin API and the metrics first: once a listener is announced, the whole server is
    // up.
    let admin = crate::admin::bind(setup.admin.clone()).await?;
    let metrics_socket = match config.metrics {
        Some(address) => {
            let socket = crate::metrics::bind(address).await?;
            announce!(
                "backstop: metrics on http://{}/metrics",
                socket.local_addr()?
            );
            Some(socket)
        }
        None => None,
    };
    let mut listeners = Vec::new();
    let addresses: Vec<std::net::SocketAddr> = config.listeners.iter().map(|l| l.address).collect();
    for l in &config.listeners {
        // IPV6_V6ONLY where an IPv4 listener shares the port (0.0.0.0:25 beside [::]:25).
        let socket = backstop_listener::bind::bind(l.address, &addresses)
            .and_then(TcpListener::from_std)
            .with_context(|| format!("listener {:?}: cannot listen on {}", l.name, l.address))?;
        let address = socket.local_addr()?;
        announce!(
            "backstop: listener {} ({}) on {address}",
            l.name,
            l.kind.name()
        );
        info!(listener = %l.name, %address, "listening");
        listeners.push(Listener {
            name: l.name.clone(),
            socket,
            mode: match l.kind {
                ListenerKind::Submissions => ListenerMode::ImplicitTls,
                ListenerKind::Mx | ListenerKind::Submission => ListenerMode::Plain,
            },
        });
    }

    let (stop, shutdown) = watch::channel(false);
    let shared = Shared::new(&setup)?;
    let counters = Arc::new(backstop_delivery::report::Counters::default());
    let smtp_metrics = Arc::new(backstop_listener::metrics::SmtpMetrics::default());
    let sources = Arc::new(crate::metrics::Sources {
        queue: queue.clone(),
        delivery: Arc::clone(&counters),
        smtp: Arc::clone(&smtp_metrics),
    });
    if let Some(socket) = metrics_socket {
        tokio::spawn(crate::metrics::serve(
            socket,
            Arc::clone(&sources),
            shutdown.clone(),
        ));
    }
    let admin = tokio::spawn(crate::admin::serve(
        admin,
        crate::admin::Served {
            queue: queue.clone(),
            metrics: sources,
        },
        shutdown.clone(),
    ));
    let maildir = std::path::absolute(&config.delivery.maildir)?;
    let own = Arc::new(backstop_delivery::own::OwnAddresses {
        listeners: listeners
            .iter()
            .filter_map(|l| l.socket.local_addr().ok())
            .collect(),
        interfaces: crate::interfaces::addresses(),
    });
    let (agents, agent) = watch::channel(delivery_agent(
        &setup,
        &queue,
        maildir.clone(),
        Arc::clone(&counters),
        &shared,
        &own,
    )?);
    let scheduler = backstop_delivery::scheduler::Scheduler::new(agents.borrow().limits);
    // Delivery stops as sessions do: a transaction under way may finish within the grace.
    let agent = scheduler.run(agent, shutdown.clone(), config.smtp.shutdown_grace);
    let delivery = if config.delivery.paused {
        warn!("delivery is paused: messages are accepted and queued, nothing is delivered");
        None
    } else {
        announce!(
            "backstop: local mail is delivered into {}",
            maildir.display()
        );
        Some(tokio::spawn(agent))
    };
    tokio::spawn(expire_quarantine(
        queue.clone(),
        config.queue.quarantine_retention,
    ));
    let context = smtp_context(&setup, tls, &shared, &queue, &smtp_metrics, None)?;
    let (contexts, current) = watch::channel(Arc::new(context));
    tokio::spawn(watch_recipients(current.clone()));
    tokio::spawn(reload_on_hangup(
        signals.hangup,
        setup,
        Reloader {
            path,
            data_dir: data_dir.clone(),
            queue: queue.clone(),
            metrics: smtp_metrics,
            counters,
            contexts,
            agents,
            own,
            log,
        },
    ));
    tokio::spawn(async move {
        signals.stop.wait().await;
        info!("shutting down");
        let _ = stop.send(true);
    });
    backstop_listener::serve(listeners, current, shutdown).await;
    if let Some(Err(e)) = match delivery {
        Some(task) => Some(task.await),
        None => None,
    } {
        error!(error = %e, "delivery agent task");
    }
    match admin.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => error!(error = %e, "admin API"),
        Err(e) => error!(error = %e, "admin API task"),
    }
    info!("stopped");
    Ok(())
}

/// Deletes quarantined messages past their retention: at start, then every hour.
async fn expire_quarantine(queue: Queue, retention: std::time::Duration) {
    let mut every_hour = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        every_hour.tick().await;
        let queue = queue.clone();
        let now = now();
        match tokio::task::spawn_blocking(move || queue.expire_quarantine(now, retention)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(deleted = n, "quarantine retention"),
            Ok(Err(e)) => error!(error = %e, "quarantine retention"),
            Err(e) => error!(error = %e, "quarantine retention task"),
        }
    }
}

/// Callahead: the recipients of domains whose route says so are verified at RCPT by asking
/// the route's next hop (an RCPT probe with a real sender, then RSET): an edge relay's
/// internal server, or, for a local domain whose route names it, the mailbox server over LMTP
/// (Dovecot answers for unknown users and, with `lmtp_rcpt_check_quota`, full mailboxes; MAIL
/// carries the client's SIZE). The next hop's refusal is the client's reply. Answers are kept
/// for a while in the queue's key-value area (quota answers for a minute at most). A next hop
/// that cannot answer means 451: never an accept on a failed lookup.
struct Callahead {
    /// (domains, any domain, next hop, how to talk to it), first match wins.
    routes: Vec<(
        Vec<backstop_types::Domain>,
        bool,
        backstop_smtp_client::NextHop,
        backstop_smtp_client::Settings,
    )>,
    sender: Address,
    /// How long an answer is remembered.
    ttl: backstop_config::CallaheadTtl,
}

/// How long a mailbox server's answer about a full mailbox is kept at most: it changes as
/// soon as its owner deletes mail.
const QUOTA_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl Callahead {
    /// Asks about `recipient` (of a local domain when `local`: only a route that names the
    /// domain asks; a `*` route never takes a local domain).
    async fn check(
        &self,
        queue: &Queue,
        recipient: &Address,
        local: bool,
        size: Option<u64>,
    ) -> RecipientVerdict {
        let domain = recipient.domain();
        let Some((_, _, hop, client)) = self
            .routes
            .iter()
            .find(|(domains, any, _, _)| domains.contains(domain) || (*any && !local))
        else {
            return RecipientVerdict::Accept(vec![recipient.clone()]);
        };
        let key = format!("callahead:{}", recipient.to_string().to_ascii_lowercase());
        let now = now();
        match queue.state_get(key.as_bytes(), now) {
            Ok(Some(answer)) => {
                if let Some(verdict) = remembered(&answer, recipient) {
                    return verdict;
                }
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "callahead cache unreadable"),
        }
        let probe = backstop_smtp_client::probe(hop, client, &self.sender, recipient, size).await;
        let quota = |reply: &backstop_types::RemoteReply| {
            reply.status.is_some_and(|s| s.1 == 2 && s.2 == 2)
        };
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
            let expires = backstop_types::UnixTime(now.0 + ttl.as_secs());
            if let Err(e) = queue.state_put(key.as_bytes(), answer.as_bytes(), expires) {
                warn!(error = %e, "callahead cache not written");
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
                        Some(backstop_types::EnhancedStatus(c as u8, s, d))
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

/// Bounces to our addresses must answer mail we sent: carry a valid BATV tag of our keys.
struct BounceCheck {
    keys: backstop_batv::Keys,
    /// Refuse bounces without a valid tag (`[batv] check_bounces`); without it valid tags are
    /// only removed.
    enforce: bool,
    /// `user@domain` and `@domain` entries that take untagged bounces.
    exempt: Vec<String>,
}

impl BounceCheck {
    /// The address without its tag, when it carries a valid one of our keys.
    fn untagged(&self, address: &Address) -> Option<Address> {
        self.keys.verify(address, backstop_batv::day_of(now())).ok()
    }

    /// The address to deliver to (the tag stripped), or why the bounce is refused. abuse@ and
    /// the configured exemptions pass untagged; postmaster@ never gets here.
    fn recipient(&self, address: &Address) -> Result<Address, BounceProblem> {
        let lower = address.to_string().to_ascii_lowercase();
        let exempt = address.local_part().eq_ignore_ascii_case("abuse")
            || self.exempt.iter().any(|e| match e.strip_prefix('@') {
                Some(domain) => address.domain().as_str() == domain,
                None => *e == lower,
            });
        match self.keys.verify(address, backstop_batv::day_of(now())) {
            Ok(untagged) => Ok(untagged),
            Err(_) if exempt => Ok(address.clone()),
            Err(backstop_batv::TagError::Missing) => Err(BounceProblem::Missing),
            Err(backstop_batv::TagError::Expired) => Err(BounceProblem::Expired),
            Err(_) => Err(BounceProblem::Invalid),
        }
    }
}

/// How to talk to route `r`'s relay while a client waits for the answer: replies within
/// `wait` (and the connection too, if the configured connect timeout is longer).
fn waiting_client(
    config: &Config,
    r: &crate::load::Route,
    wait: std::time::Duration,
) -> backstop_smtp_client::Settings {
    use backstop_smtp_client::{Settings, Timeouts};
    Settings {
        helo: config.hostname.clone(),
        lmtp: r.config.lmtp,
        tls: r.tls.clone(),
        connect_timeout: config.delivery.connect_timeout.min(wait),
        timeouts: Timeouts {
            command: wait,
            data_start: wait,
            ..Timeouts::RFC5321
        },
        auth: r.auth.clone(),
    }
}

/// The callahead routes of the config; `None` when no route asks.
fn callahead(setup: &Setup) -> Option<Arc<Callahead>> {
    let config = &setup.config;
    let routes: Vec<_> = setup
        .routes
        .iter()
        .filter(|r| r.config.callahead)
        .filter_map(|r| {
            // A probe must be quick: the client waits for the RCPT reply meanwhile.
            let client = waiting_client(config, r, std::time::Duration::from_secs(30));
            let c = &r.config;
            Some((c.domains.clone(), c.any_domain, c.relay.clone()?, client))
        })
        .collect();
    (!routes.is_empty()).then(|| {
        Arc::new(Callahead {
            routes,
            sender: config.callahead.sender.clone(),
            ttl: config.callahead.ttl,
        })
    })
}

/// The routes with `proxy = true` (never LMTP: the config refuses it), each with how to talk
/// to its relay.
fn proxy(setup: &Setup) -> Option<Arc<crate::proxy::Proxy>> {
    let routes = setup
        .routes
        .iter()
        .filter(|r| r.config.proxy)
        .filter_map(|r| {
            let client = waiting_client(&setup.config, r, std::time::Duration::from_secs(60));
            Some((r.config.domains.clone(), r.config.relay.clone()?, client))
        })
        .collect();
    crate::proxy::Proxy::new(routes)
}

/// What the policy and the delivery agent both use, made once: the DNS resolver (one cache)
/// and the BATV keys (the key file read, or made, once).
struct Shared {
    /// `None` when nothing looks anything up: no MX route, no blocklist, no sender checks.
    dns: Option<backstop_filter::dns::TokioResolver>,
    batv: Option<backstop_batv::Keys>,
}

impl Shared {
    fn new(setup: &Setup) -> anyhow::Result<Shared> {
        let config = &setup.config;
        let needs_dns = config.routes.iter().any(|r| r.relay.is_none())
            || !config.dnsbl.is_empty()
            || config.sender_checks.is_some();
        let dns = match needs_dns {
            true => Some(backstop_filter::dns::resolver(&config.dns).map_err(anyhow::Error::msg)?),
            false => None,
        };
        Ok(Shared {
            dns,
            batv: crate::batv::keys(setup)?,
        })
    }
}

/// The delivery agent as the config describes it.
fn delivery_agent(
    setup: &Setup,
    queue: &Queue,
    maildir: std::path::PathBuf,
    counters: Arc<backstop_delivery::report::Counters>,
    shared: &Shared,
    own: &Arc<backstop_delivery::own::OwnAddresses>,
) -> anyhow::Result<backstop_delivery::agent::Agent> {
    use backstop_delivery::agent::{Agent, Route, Routes, Signing, Via};
    use backstop_delivery::scheduler::Limits;
    use backstop_smtp_client::{Settings, Timeouts};
    let config = &setup.config;
    let routes = setup
        .routes
        .iter()
        .map(|loaded| (loaded, &loaded.config))
        .map(|(loaded, r)| Route {
            domains: r.domains.clone(),
            any_domain: r.any_domain,
            via: match &r.relay {
                Some(hop) => Via::Relay(hop.clone()),
                None => Via::Mx {
                    port: config.delivery.mx_port,
                },
            },
            client: Settings {
                helo: config.hostname.clone(),
                lmtp: r.lmtp,
                tls: loaded.tls.clone(),
                connect_timeout: config.delivery.connect_timeout,
                timeouts: Timeouts::RFC5321,
                auth: loaded.auth.clone(),
            },
        })
        .collect::<Vec<_>>();
    let resolver = match (&shared.dns, config.routes.iter().any(|r| r.relay.is_none())) {
        (Some(dns), true) => Some(backstop_delivery::mx::Resolver::new(dns.clone())),
        _ => None,
    };
    Ok(Agent {
        queue: queue.clone(),
        routes: Routes {
            local_domains: config.smtp.local_domains.clone(),
            maildir,
            routes,
        },
        retry: backstop_queue::RetryPolicy {
            min_backoff: config.queue.retry.min_backoff,
            max_backoff: config.queue.retry.max_backoff,
            lifetime: config.queue.retry.lifetime,
        },
        hostname: config.hostname.clone(),
        resolver,
        signing: Arc::new(Signing {
            batv: shared.batv.clone(),
            dkim: Arc::clone(&setup.dkim),
        }),
        limits: Limits {
            connections: config.delivery.max_connections,
            per_destination: config.delivery.max_connections_per_destination,
            initial_window: config.delivery.initial_window,
            dead_after: config.delivery.dead_after,
            dead_backoff: config.delivery.dead_backoff,
            in_flight: config.delivery.max_in_flight,
        },
        reports: backstop_delivery::report::Settings {
            delay_warnings: {
                let mut times = config.queue.delay_warnings.clone();
                times.sort();
                times
            },
            counters,
        },
        own: Arc::clone(own),
    })
}

fn session_config(config: &Config, name: &str, kind: ListenerKind) -> SessionConfig {
    let submission_auth = if config.auth.allow_plaintext {
        AuthPolicy::AllowPlaintext
    } else {
        AuthPolicy::RequireTls
    };
    let (starttls, auth, require_auth) = match kind {
        ListenerKind::Mx => (true, AuthPolicy::Disabled, false),
        ListenerKind::Submission => (true, submission_auth, true),
        // TLS is on from the start: no STARTTLS to offer.
        ListenerKind::Submissions => (false, submission_auth, true),
    };
    SessionConfig {
        hostname: config.hostname.clone(),
        listener: name.to_owned(),
        max_line_length: config.smtp.max_line_length,
        max_recipients: config.smtp.max_recipients,
        max_message_size: config.smtp.max_message_size,
        max_errors: config.smtp.max_errors,
        command_timeout: config.smtp.command_timeout,
        data_timeout: config.smtp.data_timeout,
        min_data_rate: config.smtp.min_data_rate,
        max_hops: config.smtp.max_hops,
        // Local domains no route names go into Maildirs (a `*` route never takes one).
        maildir_domains: config
            .smtp
            .local_domains
            .iter()
            .filter(|d| !config.routes.iter().any(|r| r.domains.contains(d)))
            .cloned()
            .collect(),
        starttls,
        auth,
        require_auth,
        local_domains: config.smtp.local_domains.clone(),
        relay_domains: config.smtp.relay_domains.clone(),
        check_recipients: config.recipients.is_some()
            || config.ldap.is_some()
            || config.routes.iter().any(|r| r.callahead || r.proxy)
            || config.batv.is_some()
            || config.greylist.is_some()
            || config.rate_limits.any(),
        check_senders: config.rate_limits.any()
            || !config.dnsbl.is_empty()
            || config.sender_checks.as_ref().is_some_and(|c| c.spf_at_mail),
        check_messages: config.rfc5322 != ContentAction::Off
            || config.sender_checks.is_some()
            || config.bounce_provenance
            || !config.content_checks.is_empty(),
    }
}

/// SIGTERM, SIGINT and SIGHUP, caught from the moment this is made: made before any listener
/// is announced, so that a stop or a reload right after start is handled, never the default
/// death.
struct Signals {
    stop: Stop,
    /// `None` when it could not be caught: reloads are then impossible.
    hangup: Option<tokio::signal::unix::Signal>,
}

/// SIGTERM or SIGINT.
struct Stop(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let stop = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Stop(Some((term, int))),
            _ => {
                error!("cannot install signal handlers; stop with SIGKILL");
                Stop(None)
            }
        };
        let hangup = signal(SignalKind::hangup())
            .map_err(|e| error!(error = %e, "cannot catch SIGHUP: no reloads"))
            .ok();
        Signals { stop, hangup }
    }
}

impl Stop {
    async fn wait(self) {
        match self.0 {
            Some((mut term, mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use backstop_types::{Address, ReversePath};

    use super::*;

    /// A filter that checks nothing, over `queue`; tests set what they need.
    fn bare(queue: Queue) -> Filter {
        Filter {
            ldap: None,
            auth_ldap: None,
            auth_dovecot: None,
            users: Arc::new(UserStore::default()),
            callahead: None,
            proxy: None,
            bounce_provenance: false,
            bounce_provenance_domains: Vec::new(),
            local_domains: Vec::new(),
            dnsbl: None,
            sender_auth: None,
            batv: None,
            rfc5322: ContentAction::Off,
            content: Pipeline {
                checks: Vec::new(),
                deadline: std::time::Duration::from_secs(60),
            },
            recipients: None,
            greylist: None,
            rate_limits: RateLimits::default(),
            rates: Arc::default(),
            queue,
        }
    }

    #[test]
    fn trusted_clients_are_never_greylisted_and_unknown_recipients_leave_no_state() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        let table = dir.path().join("recipients");
        std::fs::write(&table, "bob@example.com\n").unwrap();
        let filter = Filter {
            recipients: Some(TableFile::open(&table).unwrap()),
            greylist: Some(GreylistPolicy {
                delay: Duration::from_secs(300),
                retry_window: Duration::from_secs(86_400),
                auto_pass: Duration::from_secs(86_400),
            }),
            ..bare(queue)
        };
        let query = |recipient: &str, trusted: bool| RecipientQuery {
            recipient: Address::parse(recipient).unwrap(),
            sender: ReversePath::Null,
            client: "192.0.2.1".parse().unwrap(),
            local: true,
            trusted,
            user: None,
            transaction: backstop_session::TransactionRef {
                session: 1,
                number: 1,
            },
            proxied: None,
            size: None,
        };
        let bob = Address::parse("bob@example.com").unwrap();
        assert_eq!(
            filter.decide(&query("bob@example.com", true)),
            RecipientVerdict::Accept(vec![bob])
        );
        assert_eq!(
            filter.decide(&query("nobody@example.com", false)),
            RecipientVerdict::Unknown
        );
        assert_eq!(
            filter.decide(&query("bob@example.com", false)),
            RecipientVerdict::Defer { retry_after: 300 }
        );
    }

    #[test]
    fn bounces_need_our_tag_and_leave_it_behind() {
        let dir = tempfile::tempdir().unwrap();
        let keys =
            backstop_batv::Keys::new(&[(2, b"a secret for the test".to_vec())], 2, 7).unwrap();
        let today = backstop_batv::day_of(now());
        let bob = Address::parse("bob@example.com").unwrap();
        let tagged = keys.sign(&bob, today);
        let filter = Filter {
            batv: Some(BounceCheck {
                keys: keys.clone(),
                enforce: true,
                exempt: vec!["lists@example.com".into(), "@other.example".into()],
            }),
            ..bare(Queue::open(dir.path()).unwrap())
        };
        let query = |recipient: &Address, sender: ReversePath| RecipientQuery {
            recipient: recipient.clone(),
            sender,
            client: "192.0.2.1".parse().unwrap(),
            local: true,
            trusted: false,
            user: None,
            transaction: backstop_session::TransactionRef {
                session: 1,
                number: 1,
            },
            proxied: None,
            size: None,
        };
        let bounce = |r: &Address| filter.decide(&query(r, ReversePath::Null));
        assert_eq!(bounce(&tagged), RecipientVerdict::Accept(vec![bob.clone()]));
        assert_eq!(
            bounce(&bob),
            RecipientVerdict::NotOurBounce(BounceProblem::Missing)
        );
        let forged = Address::parse(&tagged.to_string().replace("=bob@", "=eve@")).unwrap();
        assert_eq!(
            bounce(&forged),
            RecipientVerdict::NotOurBounce(BounceProblem::Invalid)
        );
        let stale = keys.sign(&bob, today - 30);
        assert_eq!(
            bounce(&stale),
            RecipientVerdict::NotOurBounce(BounceProblem::Expired)
        );
        // Exempt: abuse@, the configured address and domain.
        for exempt in ["abuse@example.com", "LISTS@example.com", "x@other.example"] {
            let a = Address::parse(exempt).unwrap();
            assert_eq!(
                bounce(&a),
                RecipientVerdict::Accept(vec![a.clone()]),
                "{exempt}"
            );
        }
        // Mail with a sender is not a bounce: untagged is fine.
        let mail = filter.decide(&query(
            &bob,
            ReversePath::Address(Address::parse("x@example.org").unwrap()),
        ));
        assert_eq!(mail, RecipientVerdict::Accept(vec![bob]));
    }

    #[tokio::test]
    async fn users_are_limited_apart_from_clients_and_local_networks_are_exempt() {
        let dir = tempfile::tempdir().unwrap();
        let one_a_day = Some(Limit::parse("1/1d").unwrap());
        let filter = Filter {
            rate_limits: RateLimits {
                client_messages: one_a_day,
                user_messages: one_a_day,
                ..RateLimits::default()
            },
            ..bare(Queue::open(dir.path()).unwrap())
        };
        let query = |user: Option<&str>, trusted: bool| SenderQuery {
            sender: ReversePath::Null,
            client: "192.0.2.1".parse().unwrap(),
            helo: "client.example".into(),
            user: user.map(str::to_owned),
            trusted,
        };
        let alice = || query(Some("alice"), true);
        assert_eq!(filter.check_sender(alice()).await, SenderVerdict::Accept);
        assert_eq!(
            filter.check_sender(alice()).await,
            SenderVerdict::RateLimited
        );
        // The same address without AUTH has its own count; a local network has none.
        assert_eq!(
            filter.check_sender(query(None, false)).await,
            SenderVerdict::Accept
        );
        assert_eq!(
            filter.check_sender(query(None, false)).await,
            SenderVerdict::RateLimited
        );
        for _ in 0..3 {
            assert_eq!(
                filter.check_sender(query(None, true)).await,
                SenderVerdict::Accept
            );
        }
        assert!(filter.allow_connection("192.0.2.1".parse().unwrap(), false));
    }
}
