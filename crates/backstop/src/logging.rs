//! The log: plain lines or JSON objects on standard error, at the configured level, which a
//! reload can change (unless RUST_LOG decides it).

use anyhow::Context as _;
use tracing::{error, info};

/// The running log: its format, and a handle that changes its level on reload.
pub struct LogControl {
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
    pub(crate) fn set_level(&self, level: &str) {
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

/// Whether the log is JSON (set once, at start).
static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the log is JSON: then nothing but log objects goes to standard output or error.
pub(crate) fn json() -> bool {
    JSON.load(std::sync::atomic::Ordering::Relaxed)
}

pub(crate) fn init(log: &backstop_config::Log) -> anyhow::Result<LogControl> {
    JSON.store(log.json, std::sync::atomic::Ordering::Relaxed);
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
