//! The SMTP side built from the config: the site's policy (`backstop_policy::SitePolicy`)
//! with every check the config turns on, the certificate, the users, the connection limits
//! and each listener's session rules, which ask for the checks the policy makes.

use std::path::Path;
use std::sync::Arc;

use backstop_config::{Config, ListenerKind, Tls};
use backstop_filter::pipeline::Pipeline;
use backstop_listener::tls::{CertSource, Made};
use backstop_listener::{ConnectionLimits, Context};
use backstop_policy::{BounceCheck, Callahead, Proxy, SitePolicy};
use backstop_queue::Queue;
use backstop_session::{AuthOutcome, AuthPolicy, Checks, Policy as _, SessionConfig};
use backstop_types::{Clock, Domain};
use tracing::warn;

use crate::load::Setup;
use crate::serve::Shared;
use crate::sink::QueueSink;

/// The SMTP side's shared state: the queue as the sink, the site's policy.
pub(crate) type SmtpContext = Context<QueueSink, SitePolicy>;

/// The server's certificate: the configured files, or a self-signed one, made again when it
/// expires soon or names another host.
pub(crate) fn load_tls(
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
pub(crate) fn smtp_context(
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
        counters: previous.map_or_else(Arc::default, |p| Arc::clone(&p.policy.counters)),
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
        max_scan_size: config.max_scan_size,
        memory: Arc::clone(&shared.memory),
        hostname: config.hostname.clone(),
        auth_ldap: setup
            .auth_ldap
            .clone()
            .map(|l| Arc::new(backstop_filter::ldap::LdapSource::new(l))),
        auth_dovecot: config.auth.dovecot.clone(),
        users: Arc::clone(&users),
        state: Arc::clone(&shared.state),
        clock: Arc::clone(clock),
    };
    // The session asks for what the policy checks.
    let checks = policy.checks();
    shared.memory.set_limit(config.smtp.max_message_memory);
    let listeners = config
        .listeners
        .iter()
        .map(|l| {
            let settings = backstop_listener::ListenerSettings {
                session: Arc::new(session_config(
                    config,
                    &l.name,
                    Role::Listener(l.kind),
                    checks,
                    &shared.memory,
                    &queue.incoming_dir(),
                )),
                greeting_delay: config.smtp.greeting_delay,
                shutdown_grace: config.smtp.shutdown_grace,
                stress_timeout: config.smtp.stress_timeout,
            };
            (l.name.clone(), settings)
        })
        .collect();
    let local = config
        .sendmail
        .is_some()
        .then(|| backstop_listener::ListenerSettings {
            session: Arc::new(session_config(
                config,
                "sendmail",
                Role::LocalSocket,
                checks,
                &shared.memory,
                &queue.incoming_dir(),
            )),
            greeting_delay: std::time::Duration::ZERO,
            shutdown_grace: config.smtp.shutdown_grace,
            stress_timeout: config.smtp.stress_timeout,
        });
    Ok(Context {
        sink: QueueSink {
            queue: queue.clone(),
            local_domains: config.smtp.local_domains.clone(),
        },
        policy,
        tls: Some(tls),
        users,
        limits,
        auth_limits: match previous {
            Some(p) => Arc::new(p.auth_limits.resized(config.auth.limits)),
            None => Arc::new(backstop_listener::auth_limits::AuthLimits::new(
                config.auth.limits,
                Arc::clone(&shared.state),
            )),
        },
        local_networks: config.smtp.local_networks.clone(),
        metrics: Arc::clone(metrics),
        listeners,
        local,
        local_senders: local_senders(config),
        clock: Arc::clone(clock),
    })
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
            Some(backstop_policy::proxy::Route {
                domains: r.config.domains.clone(),
                relay: r.config.relay.clone()?,
                client: waiting_client(&setup.config, r, std::time::Duration::from_secs(60)),
            })
        })
        .collect();
    Proxy::new(routes).map(Arc::new)
}

/// What a local user of the sendmail socket may send as: its name at this host's name, at the
/// mail name (`/etc/mailname`, which `backstop sendmail` uses without `-f`) and at each local
/// domain; anything for `[sendmail] trusted_users` or without `[auth] restrict_sender`.
fn local_senders(config: &Config) -> backstop_listener::LocalSenders {
    let mailname = crate::sendmail::mail_name().unwrap_or_default();
    let mut domains: Vec<Domain> = [config.hostname.as_str(), mailname.as_str()]
        .into_iter()
        .filter_map(|name| Domain::parse(name).ok())
        .chain(config.smtp.local_domains.iter().cloned())
        .collect();
    domains.dedup();
    backstop_listener::LocalSenders {
        restrict: config.auth.restrict_sender,
        trusted_users: config.sendmail_trusted_users.clone(),
        domains,
    }
}

/// Whose sessions a [`SessionConfig`] is for.
enum Role {
    Listener(ListenerKind),
    /// The local submission socket: logged in by the driver (as the peer's Unix user), no
    /// TLS and no AUTH to offer.
    LocalSocket,
}

fn session_config(
    config: &Config,
    name: &str,
    role: Role,
    checks: Checks,
    memory: &Arc<backstop_session::budget::MemoryBudget>,
    spool: &std::path::Path,
) -> SessionConfig {
    let submission_auth = if config.auth.allow_plaintext {
        AuthPolicy::AllowPlaintext
    } else {
        AuthPolicy::RequireTls
    };
    let (starttls, auth, require_auth) = match role {
        Role::Listener(ListenerKind::Mx) => (true, AuthPolicy::Disabled, false),
        Role::Listener(ListenerKind::Submission) => (true, submission_auth, true),
        // TLS is on from the start: no STARTTLS to offer.
        Role::Listener(ListenerKind::Submissions) => (false, submission_auth, true),
        Role::LocalSocket => (false, AuthPolicy::Disabled, true),
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
        memory: Arc::clone(memory),
        spool: Some(backstop_session::SpoolConfig {
            dir: spool.to_owned(),
            threshold: config.smtp.spool_threshold,
        }),
    }
}
