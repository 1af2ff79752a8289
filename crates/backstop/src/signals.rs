//! The signals the server answers: SIGTERM and SIGINT stop it, SIGHUP reloads the config.

use tracing::error;

/// SIGTERM, SIGINT and SIGHUP, caught from the moment this is made: made before any listener
/// is announced, so that a stop or a reload right after start is handled, never the default
/// death.
pub(crate) struct Signals {
    pub stop: Stop,
    /// `None` when it could not be caught: reloads are then impossible.
    pub hangup: Option<tokio::signal::unix::Signal>,
}

/// SIGTERM or SIGINT.
pub(crate) struct Stop(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    pub fn install() -> Signals {
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
    pub async fn wait(self) {
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
