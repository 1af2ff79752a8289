//! `backstop serve`: builds every part from the config and runs until SIGTERM or SIGINT.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use backstop_filter::pipeline::Pipeline;
use backstop_listener::tls::{CertSource, Made};
use backstop_listener::{ConnectionLimits, Context, Listener, ListenerMode, MessageSink};
use backstop_policy::{BounceCheck, Callahead, Proxy, Sent, SitePolicy};
use backstop_queue::{Queue, QueueError};
use backstop_session::{
    AuthOutcome, AuthPolicy, Checks, EnqueueFailure, Message, Policy as _, SessionConfig,
};
use backstop_types::{Clock, QueueId, UnixTime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use backstop_config::{Config, ListenerKind, Tls};

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

/// The policy's state in the queue's key-value area and sent-Message-ID index.
struct QueueStore(Queue);

impl backstop_policy::Store for QueueStore {
    fn get(&self, key: &[u8], now: UnixTime) -> Result<Option<Vec<u8>>, String> {
        self.0.state_get(key, now).map_err(|e| e.to_string())
    }

    fn put(&self, key: &[u8], value: &[u8], expires: UnixTime) -> Result<(), String> {
        self.0
            .state_put(key, value, expires)
            .map_err(|e| e.to_string())
    }

    fn sent(&self, message_id: &str) -> Result<Sent, String> {
        let hash = backstop_queue::message_id_hash(message_id);
        match (
            self.0.sent_message_ids_empty(),
            self.0.sent_message_id(hash),
        ) {
            (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
            (Ok(true), _) => Ok(Sent::NothingYet),
            (Ok(false), Ok(Some(_))) => Ok(Sent::Yes),
            (Ok(false), Ok(None)) => Ok(Sent::No),
        }
    }
}

/// The SMTP side's shared state: the queue as the sink, the site's policy.
type SmtpContext = Context<QueueSink, SitePolicy>;

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
    let tls = backstop_listener::tls::load(&source, backstop_types::SystemClock.now())?;
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
    let clock = &shared.clock;
    let policy = SitePolicy {
        local_domains: config.smtp.local_domains.clone(),
        batv: match (&shared.batv, &config.batv) {
            (Some(keys), Some(batv)) => Some(BounceCheck {
                keys: keys.clone(),
                enforce: batv.check_bounces,
                exempt: batv.exempt.clone(),
                clock: Arc::clone(clock),
            }),
            _ => None,
        },
        recipients,
        ldap: setup
            .ldap
            .clone()
            .map(|l| Arc::new(backstop_filter::ldap::LdapSource::new(l))),
        greylist: config.greylist,
        rate_limits: config.rate_limits.clone(),
        rates: previous.map_or_else(Arc::default, |p| Arc::clone(&p.policy.rates)),
        callahead: callahead(setup, clock),
        proxy: proxy(setup),
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
        rfc5322: config.rfc5322,
        bounce_provenance: config.bounce_provenance,
        bounce_provenance_domains: config.bounce_provenance_domains.clone(),
        content: Pipeline {
            checks: config.content_checks.clone(),
            deadline: config.content_deadline,
        },
        auth_ldap: setup
            .auth_ldap
            .clone()
            .map(|l| Arc::new(backstop_filter::ldap::LdapSource::new(l))),
        auth_dovecot: config.auth.dovecot.clone(),
        users: Arc::clone(&users),
        store: Arc::new(QueueStore(queue.clone())),
        clock: Arc::clone(clock),
    };
    // The session asks for what the policy checks.
    let checks = policy.checks();
    let listeners = config
        .listeners
        .iter()
        .map(|l| {
            let settings = backstop_listener::ListenerSettings {
                session: Arc::new(session_config(config, &l.name, l.kind, checks)),
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
        policy,
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
        clock: Arc::clone(clock),
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
        let now = backstop_types::SystemClock.now();
        match tokio::task::spawn_blocking(move || queue.expire_quarantine(now, retention)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(deleted = n, "quarantine retention"),
            Ok(Err(e)) => error!(error = %e, "quarantine retention"),
            Err(e) => error!(error = %e, "quarantine retention task"),
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
fn callahead(setup: &Setup, clock: &Arc<dyn Clock>) -> Option<Arc<Callahead>> {
    use backstop_policy::callahead::{Route, Ttl};
    let config = &setup.config;
    let routes: Vec<_> = setup
        .routes
        .iter()
        .filter(|r| r.config.callahead)
        .filter_map(|r| {
            Some(Route {
                domains: r.config.domains.clone(),
                any_domain: r.config.any_domain,
                hop: r.config.relay.clone()?,
                // A probe must be quick: the client waits for the RCPT reply meanwhile.
                client: waiting_client(config, r, std::time::Duration::from_secs(30)),
            })
        })
        .collect();
    (!routes.is_empty()).then(|| {
        Arc::new(Callahead {
            routes,
            sender: config.callahead.sender.clone(),
            ttl: Ttl {
                positive: config.callahead.ttl.positive,
                negative: config.callahead.ttl.negative,
            },
            clock: Arc::clone(clock),
        })
    })
}

/// The routes with `proxy = true` (never LMTP: the config refuses it), each with how to talk
/// to its relay.
fn proxy(setup: &Setup) -> Option<Arc<Proxy>> {
    let routes = setup
        .routes
        .iter()
        .filter(|r| r.config.proxy)
        .filter_map(|r| {
            let client = waiting_client(&setup.config, r, std::time::Duration::from_secs(60));
            Some((r.config.domains.clone(), r.config.relay.clone()?, client))
        })
        .collect();
    Proxy::new(routes).map(Arc::new)
}

/// What the policy and the delivery agent both use, made once: the DNS resolver (one cache)
/// and the BATV keys (the key file read, or made, once).
struct Shared {
    /// `None` when nothing looks anything up: no MX route, no blocklist, no sender checks.
    dns: Option<backstop_filter::dns::TokioResolver>,
    batv: Option<backstop_batv::Keys>,
    /// The time, for every part that reads it.
    clock: Arc<dyn Clock>,
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
            clock: backstop_types::clock::system(),
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

fn session_config(
    config: &Config,
    name: &str,
    kind: ListenerKind,
    checks: Checks,
) -> SessionConfig {
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
        checks,
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
