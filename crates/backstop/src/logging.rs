//! The log: plain lines or JSON objects on standard error, at the configured level, which a
//! reload can change (unless RUST_LOG decides it). When standard error is the journal's stream
//! (a systemd service), each line starts with its syslog priority, `<3>` for an error to `<7>`
//! for debug, which journald takes off and keeps as the entry's priority (systemd's
//! `SyslogLevelPrefix=`, on by default): `journalctl -u backstop -p warning` shows warnings
//! and errors alone.

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
    let journal = std::env::var_os("JOURNAL_STREAM")
        .is_some_and(|stream| names_stream(&stream, std::io::stderr()));
    match log.json {
        // One object per line: the event's fields, and the spans it happened in (the
        // session's id, peer and listener; the delivery's queue id).
        true => registry
            .with(
                fmt.json()
                    .with_span_list(true)
                    .map_event_format(|format| Priority { format, journal }),
            )
            .init(),
        false => registry
            .with(
                fmt.with_ansi(std::io::stderr().is_terminal())
                    .map_event_format(|format| Priority { format, journal }),
            )
            .init(),
    }
    Ok(LogControl {
        level: from_env.is_none().then_some(handle),
    })
}

/// Whether `stream` (`$JOURNAL_STREAM`: "DEVICE:INODE", which systemd sets for a service whose
/// standard output or error goes to the journal) names the file `fd` is. A service may have
/// handed its standard error elsewhere, or inherited the variable from one that did: only the
/// same device and inode count, as systemd.exec(5) says.
fn names_stream(stream: &std::ffi::OsStr, fd: impl std::os::fd::AsFd) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some((device, inode)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(device), Ok(inode)) = (device.parse::<u64>(), inode.parse::<u64>()) else {
        return false;
    };
    // fstat(2) on a duplicate: a socket's device and inode too, which no path would give.
    match fd.as_fd().try_clone_to_owned().map(std::fs::File::from) {
        Ok(file) => file
            .metadata()
            .is_ok_and(|m| m.dev() == device && m.ino() == inode),
        Err(_) => false,
    }
}

/// The event's line as `format` writes it, after its syslog priority when the log goes to the
/// journal.
struct Priority<F> {
    format: F,
    journal: bool,
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Priority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if self.journal {
            write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        }
        self.format.format_event(ctx, writer, event)
    }
}

/// syslog(3)'s priority for a level: LOG_ERR, LOG_WARNING, LOG_INFO; debug and trace are both
/// LOG_DEBUG.
fn syslog_priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        tracing::Level::DEBUG | tracing::Level::TRACE => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines one event of each level makes, text or JSON, for the journal or not.
    fn logged(json: bool, journal: bool) -> Vec<String> {
        use tracing_subscriber::prelude::*;
        let out = Captured::default();
        let writer = {
            let out = out.clone();
            move || out.clone()
        };
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(false);
        let emit = || {
            tracing::error!("an error");
            tracing::warn!("a warning");
            tracing::info!("news");
            tracing::debug!("details");
            tracing::trace!("more details");
        };
        let registry =
            tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::TRACE);
        match json {
            true => tracing::subscriber::with_default(
                registry.with(
                    fmt.json()
                        .map_event_format(|format| Priority { format, journal }),
                ),
                emit,
            ),
            false => tracing::subscriber::with_default(
                registry.with(fmt.map_event_format(|format| Priority { format, journal })),
                emit,
            ),
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn each_line_for_the_journal_starts_with_its_syslog_priority() {
        for json in [false, true] {
            let lines = logged(json, true);
            let priorities: Vec<&str> = lines.iter().map(|l| &l[..3]).collect();
            assert_eq!(
                priorities,
                ["<3>", "<4>", "<6>", "<7>", "<7>"],
                "{lines:#?}"
            );
            // The rest of the line is what it would be without the journal.
            let message = if json {
                "\"message\":\"a warning\""
            } else {
                " WARN "
            };
            assert!(lines[1].contains(message), "{lines:#?}");
        }
        let lines = logged(true, true);
        let event: serde_json::Value = serde_json::from_str(&lines[0][3..]).unwrap();
        assert_eq!(event["level"], "ERROR");
    }

    #[test]
    fn lines_not_for_the_journal_have_no_prefix() {
        for json in [false, true] {
            let lines = logged(json, false);
            assert_eq!(lines.len(), 5);
            assert!(lines.iter().all(|l| !l.starts_with('<')), "{lines:#?}");
        }
    }

    #[test]
    fn the_journal_stream_is_the_file_with_that_device_and_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let other = std::fs::File::create(dir.path().join("other")).unwrap();
        let meta = file.metadata().unwrap();
        let stream = format!("{}:{}", meta.dev(), meta.ino());
        assert!(names_stream(stream.as_ref(), &file));
        assert!(!names_stream(stream.as_ref(), &other));
        for garbage in ["", "1", "a:b", "1:2:3", ":"] {
            assert!(!names_stream(garbage.as_ref(), &file), "{garbage:?}");
        }
    }
}
