//! SIGHUP: the config read again and the SMTP side and the delivery agent's settings built
//! anew from it; and the recipient table reloaded whenever its file changes.

use std::path::PathBuf;
use std::sync::Arc;

use backstop_config::Config;
use backstop_queue::Queue;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::load::Setup;
use crate::logging::LogControl;
use crate::serve::{delivery_agent, Shared};
use crate::smtp::{load_tls, smtp_context, SmtpContext};

/// Reloads the recipient table in force whenever its file changes (polled every two seconds;
/// SIGHUP reloads it with the rest). A table that fails to load is logged; the one in force
/// stays.
pub(crate) async fn watch_recipients(contexts: watch::Receiver<Arc<SmtpContext>>) {
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
pub(crate) struct Reloader {
    /// The config file; the embedded default when `None`.
    pub path: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub queue: Queue,
    pub metrics: Arc<backstop_listener::metrics::SmtpMetrics>,
    pub counters: Arc<backstop_delivery::report::Counters>,
    /// The SMTP side, for new sessions.
    pub contexts: watch::Sender<Arc<SmtpContext>>,
    /// The delivery agent's settings, for its next pass.
    pub agents: watch::Sender<backstop_delivery::agent::Agent>,
    /// Where we listen: never a next hop.
    pub own: Arc<backstop_delivery::own::OwnAddresses>,
    pub log: LogControl,
    /// The time every check reads.
    pub clock: Arc<dyn backstop_types::Clock>,
    /// The service manager, told when a reload begins and ends.
    pub systemd: crate::notify::Notify,
}

/// On SIGHUP: reads the config again and, if it is good and keeps what needs a restart, builds
/// the SMTP side anew (session rules, checks, users, certificates, tables, keys) for the
/// sessions that start from then on, and the delivery agent's settings (routes, DKIM and BATV
/// keys, limits, retries) for its next pass. Sessions already open finish under the rules they
/// started with, a delivery pass in progress under its settings. A bad config is logged and
/// changes nothing.
pub(crate) async fn reload_on_hangup(
    hangup: Option<tokio::signal::unix::Signal>,
    mut running: Setup,
    r: Reloader,
) {
    let Some(mut hangup) = hangup else {
        return std::future::pending().await;
    };
    while hangup.recv().await.is_some() {
        r.systemd.reloading();
        reload(&mut running, &r);
        // Applied or refused, the server serves on a config that is good.
        r.systemd.ready();
    }
}

/// One reload: `running` is replaced by the config read again when it is good and keeps what
/// needs a restart; otherwise the reason is logged and nothing changes.
fn reload(running: &mut Setup, r: &Reloader) {
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
            return;
        }
    };
    if let Some(why) = needs_restart(running, &setup) {
        error!(
            why,
            "reload refused: this change needs a restart; nothing changed"
        );
        return;
    }
    let previous = Arc::clone(&r.contexts.borrow());
    let state = Arc::clone(&previous.policy.state);
    // The memory budget is the server's: sessions under way hold shares of this one, and
    // the metrics read it; the new config only changes its limit (in smtp_context).
    let memory = previous
        .listeners
        .values()
        .next()
        .map(|l| Arc::clone(&l.session.memory));
    let built = Shared::new(&setup, Arc::clone(&r.clock), state).and_then(|mut shared| {
        if let Some(memory) = &memory {
            shared.memory = Arc::clone(memory);
        }
        let tls = load_tls(&setup.config, &r.data_dir)?;
        let context = smtp_context(&setup, tls, &shared, &r.queue, &r.metrics, Some(&previous))?;
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
            *running = setup;
            info!("config reloaded");
        }
        Err(e) => error!(error = %format!("{e:#}"), "reload refused; nothing changed"),
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
    if old.sendmail != new.sendmail {
        return Some("the sendmail socket changed");
    }
    if old.metrics != new.metrics {
        return Some("the metrics address changed");
    }
    if old.delivery.paused != new.delivery.paused {
        return Some("delivery.paused changed");
    }
    if old.state != new.state {
        return Some("[state] changed");
    }
    if old.quarantine != new.quarantine {
        // The digests, the release pages, their keys and the retention are set up at start.
        return Some("[quarantine] changed");
    }
    None
}
