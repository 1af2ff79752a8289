//! `backstop serve`: builds every part from the config and runs until SIGTERM or SIGINT.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use backstop_config::ListenerKind;
use backstop_listener::{Listener, ListenerMode};
use backstop_queue::Queue;
use backstop_types::Clock;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::load::Setup;
use crate::logging::LogControl;
use crate::smtp::{load_tls, smtp_context};

/// Tells the operator something (where it listens, where data lives): a log line, and with
/// text logs the same line on standard output for the terminal and for scripts; with JSON logs
/// standard output stays empty, so that everything the server writes is JSON. A write error is
/// ignored: a daemon must not die because its stdout was closed (a finished pipe reader, a
/// detached terminal), as `println!` would make it.
macro_rules! announce {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let text = format!($($arg)*);
        tracing::info!("{text}");
        if !crate::logging::json() {
            let _ = writeln!(std::io::stdout(), "{text}");
        }
    }};
}
pub(crate) use announce;

/// Runs the server on `config`, read from `path` (the embedded default when `None`), which
/// SIGHUP reads again, until SIGTERM or SIGINT: what `backstop serve` does.
pub fn run(setup: Setup, path: Option<PathBuf>) -> anyhow::Result<()> {
    // Everything the server creates is its own: the queue (messages and their log), Maildir
    // files, keys, the admin socket. Nothing inherits a umask that lets other local users read
    // mail (Postfix's queue is private the same way).
    // SAFETY: umask has no preconditions; it is called before any thread exists.
    unsafe { libc::umask(0o077) };
    let log = crate::logging::init(&setup.config.log)?;
    for warning in &setup.config.warnings {
        warn!(%warning, "config");
    }
    // From here on the log is up: a fatal error is a log line (a JSON object with JSON logs),
    // never plain text among the log's lines.
    let result = serve_until_stopped(setup, path, log);
    if let Err(e) = &result {
        error!(error = %format!("{e:#}"), "stopped: the server cannot run");
        return Err(anyhow::Error::new(Logged));
    }
    result
}

/// A fatal error the log has already said.
#[derive(Debug)]
pub struct Logged;

impl std::fmt::Display for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped (the log says why)")
    }
}

impl std::error::Error for Logged {}

fn serve_until_stopped(
    setup: Setup,
    path: Option<PathBuf>,
    log: crate::LogControl,
) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(async {
            // Caught before any listener is announced: a stop or a reload right after start
            // is handled, never the default death.
            let signals = crate::signals::Signals::install();
            let server = Server::bind(setup, backstop_types::clock::system()).await?;
            let reload = Reload {
                path,
                hangup: signals.hangup,
                log,
                systemd: crate::notify::Notify::from_env(),
            };
            server.run(signals.stop.wait(), Some(reload)).await
        })
}

/// Binds the local submission socket, open to every user who can reach its directory (mode
/// 0666: the directory decides who may submit). A socket left by a killed run is replaced; one
/// a running server answers on is not.
async fn bind_local(path: &std::path::Path) -> anyhow::Result<backstop_listener::LocalListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("sendmail socket: creating {}", parent.display()))?;
    }
    // Only a socket is replaced: a config that names another file (a key, by a slip) must
    // not delete it.
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_socket()
    });
    if is_socket && tokio::net::UnixStream::connect(path).await.is_err() {
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let socket = tokio::net::UnixListener::bind(path)
        .and_then(|socket| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
            Ok(socket)
        })
        .with_context(|| format!("sendmail socket {}", path.display()))?;
    announce!("backstop: sendmail socket {}", path.display());
    Ok(backstop_listener::LocalListener {
        name: "sendmail".to_owned(),
        socket,
    })
}

/// What SIGHUP needs: where the config is read from, the signal, and the log to change; and
/// the service manager, told of each reload (and, since only `backstop serve` reloads, of
/// readiness and stopping).
pub struct Reload {
    /// The config file; the embedded default when `None`.
    pub path: Option<PathBuf>,
    /// `None` when SIGHUP could not be caught.
    pub hangup: Option<tokio::signal::unix::Signal>,
    pub log: LogControl,
    /// systemd's `$NOTIFY_SOCKET` (`Type=notify`), or nowhere.
    pub systemd: crate::notify::Notify,
}

/// A server whose sockets are bound and whose queue is open, not yet serving: once this is
/// made, clients can connect (and wait for the greeting until [`Server::run`]).
pub struct Server {
    setup: Setup,
    data_dir: PathBuf,
    queue: Queue,
    tls: backstop_listener::tls::TlsAcceptor,
    admin: crate::admin::Bound,
    metrics: Option<TcpListener>,
    listeners: Vec<Listener>,
    /// The local submission socket (`backstop sendmail`).
    local: Option<backstop_listener::LocalListener>,
    /// The quarantine's release pages, when `[quarantine] web` is set.
    quarantine_web: Option<TcpListener>,
    clock: Arc<dyn Clock>,
}

impl Server {
    /// Opens the queue, loads the certificate and binds the admin API, the metrics and every
    /// listener (port 0 binds a free port: [`Server::listeners`] says which). `clock` is the
    /// time every check reads.
    pub async fn bind(setup: Setup, clock: Arc<dyn Clock>) -> anyhow::Result<Server> {
        let config = &setup.config;
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
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
        // The admin API and the metrics first: once a listener is announced, the whole server
        // is up.
        let admin = crate::admin::bind(setup.admin.clone()).await?;
        let metrics = match config.metrics {
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
        let quarantine_web = match config.quarantine.web {
            Some(address) => {
                let socket = TcpListener::bind(address)
                    .await
                    .with_context(|| format!("[quarantine] web: cannot listen on {address}"))?;
                announce!(
                    "backstop: quarantine release pages on http://{}",
                    socket.local_addr()?
                );
                Some(socket)
            }
            None => None,
        };
        // The local socket before the listeners, whose announcement says all is up.
        let local = match &config.sendmail {
            Some(path) => Some(bind_local(path).await?),
            None => None,
        };
        let mut listeners = Vec::new();
        let addresses: Vec<std::net::SocketAddr> =
            config.listeners.iter().map(|l| l.address).collect();
        for l in &config.listeners {
            // IPV6_V6ONLY where an IPv4 listener shares the port (0.0.0.0:25 beside [::]:25).
            let socket = backstop_listener::bind::bind(l.address, &addresses)
                .and_then(TcpListener::from_std)
                .with_context(|| {
                    format!("listener {:?}: cannot listen on {}", l.name, l.address)
                })?;
            let address = socket.local_addr()?;
            announce!(
                "backstop: listener {} ({}) on {address}",
                l.name,
                l.kind.name()
            );
            listeners.push(Listener {
                name: l.name.clone(),
                socket,
                mode: match l.kind {
                    ListenerKind::Submissions => ListenerMode::ImplicitTls,
                    ListenerKind::Mx | ListenerKind::Submission => ListenerMode::Plain,
                },
            });
        }
        Ok(Server {
            setup,
            data_dir,
            queue,
            tls,
            admin,
            metrics,
            listeners,
            local,
            quarantine_web,
            clock,
        })
    }

    /// Each listener's name and the address it is bound to.
    pub fn listeners(&self) -> Vec<(String, std::net::SocketAddr)> {
        self.listeners
            .iter()
            .filter_map(|l| Some((l.name.clone(), l.socket.local_addr().ok()?)))
            .collect()
    }

    /// The queue, as the server stores into it.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Serves until `shutdown` completes, then tells open sessions (421), lets deliveries
    /// under way finish within the grace, and returns. With `reload`, SIGHUP reloads, and the
    /// service manager hears `READY=1` once everything is built and the listeners are about to
    /// accept, and `STOPPING=1` when `shutdown` completes.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        reload: Option<Reload>,
    ) -> anyhow::Result<()> {
        let Server {
            setup,
            data_dir,
            queue,
            tls,
            admin,
            metrics,
            listeners,
            local,
            quarantine_web,
            clock,
        } = self;
        let config = &setup.config;
        let (stop, stopping) = watch::channel(false);
        let state = site_state(&setup, &queue)?;
        announce!("backstop: shared state in {}", state.describe());
        let shared = Shared::new(&setup, clock, state)?;
        let counters = Arc::new(backstop_delivery::report::Counters::default());
        let smtp_metrics = Arc::new(backstop_listener::metrics::SmtpMetrics::default());
        let quarantine = Arc::new(crate::quarantine::Runtime::new(
            config.quarantine.clone(),
            setup.quarantine_keys.clone(),
            &data_dir,
            config.hostname.clone(),
            config.smtp.local_domains.clone(),
        )?);
        let sources = Arc::new(crate::metrics::Sources {
            quarantine: Arc::clone(&quarantine),
            queue: queue.clone(),
            delivery: Arc::clone(&counters),
            smtp: Arc::clone(&smtp_metrics),
            memory: Arc::clone(&shared.memory),
        });
        if let Some(socket) = metrics {
            tokio::spawn(crate::metrics::serve(
                socket,
                Arc::clone(&sources),
                stopping.clone(),
            ));
        }
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
        let scheduler = backstop_delivery::scheduler::Scheduler::new(
            agents.borrow().limits,
            Arc::clone(&shared.clock),
        );
        // Delivery stops as sessions do: a transaction under way may finish within the grace.
        let agent = scheduler.run(agent, stopping.clone(), config.smtp.shutdown_grace);
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
        let expiry = tokio::spawn(expire(
            queue.clone(),
            Retention {
                quarantine: Arc::clone(&quarantine),
                sent_ids: config.sent_id_retention,
                delivery: Arc::clone(&counters),
            },
            Arc::clone(&shared.clock),
        ));
        if let Some(socket) = quarantine_web {
            tokio::spawn(crate::quarantine::web::serve(
                socket,
                queue.clone(),
                Arc::clone(&quarantine),
                stopping.clone(),
            ));
        }
        tokio::spawn(crate::quarantine::digest::run(
            queue.clone(),
            Arc::clone(&quarantine),
            agents.subscribe(),
            Arc::clone(&shared.clock),
            stopping.clone(),
        ));
        let context = smtp_context(&setup, tls, &shared, &queue, &smtp_metrics, None)?;
        let (contexts, current) = watch::channel(Arc::new(context));
        let admin = tokio::spawn(crate::admin::serve(
            admin,
            crate::admin::Served {
                queue: queue.clone(),
                quarantine: Arc::clone(&quarantine),
                console: Arc::default(),
                metrics: sources,
                smtp: current.clone(),
                delivery: agents.subscribe(),
            },
            stopping.clone(),
        ));
        let systemd = match &reload {
            Some(reload) => reload.systemd.clone(),
            None => crate::notify::Notify::nowhere(),
        };
        let watcher = tokio::spawn(crate::reload::watch_recipients(current.clone()));
        let reloader = reload.map(|reload| {
            tokio::spawn(crate::reload::reload_on_hangup(
                reload.hangup,
                setup,
                crate::reload::Reloader {
                    path: reload.path,
                    data_dir: data_dir.clone(),
                    queue: queue.clone(),
                    metrics: smtp_metrics,
                    counters,
                    contexts,
                    agents,
                    own,
                    log: reload.log,
                    clock: Arc::clone(&shared.clock),
                    systemd: reload.systemd,
                },
            ))
        });
        let told = systemd.clone();
        tokio::spawn(async move {
            shutdown.await;
            info!("shutting down");
            told.stopping();
            let _ = stop.send(true);
        });
        // Every part is built and every socket bound: the accept loops start now.
        systemd.ready();
        backstop_listener::serve(listeners, local, current, stopping).await;
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
        // The jobs that run for as long as the server does end with it.
        expiry.abort();
        watcher.abort();
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        info!("stopped");
        Ok(())
    }
}

/// How long what expires is kept.
#[derive(Clone)]
struct Retention {
    /// Each kind's retention; the count of what stays is recorded here for the metrics and
    /// the console.
    quarantine: Arc<crate::quarantine::Runtime>,
    sent_ids: std::time::Duration,
    /// The reports suppressed so far, for the console's history.
    delivery: Arc<backstop_delivery::report::Counters>,
}

/// Deletes what has expired, at start and then every hour: quarantined messages past their
/// retention, state entries (greylisting, callahead answers) past their time, and sent
/// Message-IDs past theirs.
async fn expire(queue: Queue, retention: Retention, clock: Arc<dyn Clock>) {
    let mut every_hour = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        every_hour.tick().await;
        let queue = queue.clone();
        let now = clock.now();
        let runtime = Arc::clone(&retention.quarantine);
        let sent_ids = retention.sent_ids;
        let suppressed: u64 = backstop_dsn::gate::Reason::ALL
            .into_iter()
            .filter(|r| r.prevents_backscatter())
            .map(|r| retention.delivery.suppressed(r))
            .sum();
        let work = move || {
            let quarantined = queue.expire_quarantine(now, |kind| runtime.retention(kind));
            match queue.quarantine_totals() {
                Ok(totals) => runtime.record_totals(now, totals, suppressed),
                Err(e) => error!(error = %e, "counting the quarantine"),
            }
            let state = queue.expire_state(now, sent_ids);
            (quarantined, state)
        };
        let Ok((quarantined, state)) = tokio::task::spawn_blocking(work).await else {
            error!("retention task failed");
            continue;
        };
        match quarantined {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "quarantine retention"),
            Err(e) => error!(error = %e, "quarantine retention"),
        }
        match state {
            Ok(e) if e == backstop_queue::state::Expired::default() => {}
            Ok(e) => info!(state = e.state, sent_ids = e.sent, "expired state deleted"),
            Err(e) => error!(error = %e, "state expiry"),
        }
    }
}

/// What the policy and the delivery agent both use, made once: the DNS resolver (one cache)
/// and the BATV keys (the key file read, or made, once).
pub(crate) struct Shared {
    /// `None` when nothing looks anything up: no MX route, no blocklist, no sender checks.
    pub(crate) dns: Option<backstop_filter::dns::TokioResolver>,
    pub(crate) batv: Option<backstop_batv::Keys>,
    /// The time, for every part that reads it.
    pub(crate) clock: Arc<dyn Clock>,
    /// The site's state, made once at start (a reload keeps it: its counters go on).
    pub(crate) state: Arc<dyn backstop_state::State>,
    /// The memory for messages in progress (`[smtp] max_message_memory`), receiving and
    /// delivering: one for the whole server; a reload changes its limit, and what is held stays
    /// counted.
    pub(crate) memory: Arc<backstop_types::budget::MemoryBudget>,
}

/// The site's state as `[state]` says: this node's (the queue and memory), or the site's Redis,
/// each call bounded by its timeout. Redis is connected to at the first call, so a node starts
/// while Redis is down.
pub(crate) fn site_state(
    setup: &Setup,
    queue: &Queue,
) -> anyhow::Result<Arc<dyn backstop_state::State>> {
    use backstop_state::{Bounded, State};
    Ok(match &setup.config.state {
        None => Arc::new(backstop_queue::state::NodeState::new(queue.clone())),
        Some(settings) => {
            let redis: Arc<dyn State> =
                Arc::new(backstop_state::redis::Redis::new(settings.clone())?);
            // The deadline is the whole call's, connecting included.
            Arc::new(Bounded::new(redis, settings.timeout.saturating_mul(2)))
        }
    })
}

impl Shared {
    pub(crate) fn new(
        setup: &Setup,
        clock: Arc<dyn Clock>,
        state: Arc<dyn backstop_state::State>,
    ) -> anyhow::Result<Shared> {
        let config = &setup.config;
        let needs_dns =
            config.has_mx_route() || !config.dnsbl.is_empty() || config.sender_checks.is_some();
        let dns = match needs_dns {
            true => Some(backstop_filter::dns::resolver(&config.dns)?),
            false => None,
        };
        Ok(Shared {
            dns,
            batv: crate::batv::keys(setup)?,
            clock,
            state,
            memory: backstop_session::budget::MemoryBudget::new(config.smtp.max_message_memory),
        })
    }
}

/// The delivery agent as the config describes it.
pub(crate) fn delivery_agent(
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
    let resolver = match (&shared.dns, config.has_mx_route()) {
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
            idle: backstop_delivery::scheduler::IDLE,
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
        site_sent: config
            .state
            .as_ref()
            .map(|_| backstop_delivery::agent::SiteSent {
                state: Arc::clone(&shared.state),
                retention: config.sent_id_retention,
            }),
        memory: Arc::clone(&shared.memory),
    })
}
