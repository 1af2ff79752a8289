//! The bounce gate: backstop reports to a return path only when it can trust that the return
//! path is really the sender's. Everyone else gets no report; their failed mail goes to
//! quarantine instead (RFC 5321 6.2: no backscatter).

use backstop_types::{Notify, ReversePath, TrustClass};

/// What happened to a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Failed for good: a permanent reply, or the queue lifetime ran out.
    Failed,
    /// Still not delivered after one of the configured delay-notice times.
    Delayed,
    /// Delivered into a mailbox (or to a next hop that does not pass DSN requests on).
    Delivered,
    /// Handed to a next hop that does not support DSN (RFC 3464 "relayed").
    Relayed,
}

impl Event {
    /// As the log shows it: `failed`, `delayed`, `delivered`, `relayed`.
    pub fn name(self) -> &'static str {
        match self {
            Event::Failed => "failed",
            Event::Delayed => "delayed",
            Event::Delivered => "delivered",
            Event::Relayed => "relayed",
        }
    }
}

/// What the gate knows about the sender of a message.
#[derive(Debug, Clone, Copy)]
pub struct Sender<'a> {
    pub path: &'a ReversePath,
    pub trust: &'a TrustClass,
    /// The return path carries a valid, unexpired BATV tag of one of our keys.
    pub batv_valid: bool,
    /// The message is itself a report or automatic (`Auto-Submitted:` other than `no`, or a
    /// `multipart/report`): answering it could loop.
    pub automatic: bool,
}

/// The gate's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Send,
    Suppress(Reason),
}

/// Why no report is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The message is itself a bounce (`MAIL FROM:<>`), RFC 5321 6.1.
    NullSender,
    /// The message is a report or automatic reply.
    Automatic,
    /// The sender asked for no reports (NOTIFY=NEVER).
    NotifyNever,
    /// The sender did not ask for this kind of report (e.g. success without NOTIFY=SUCCESS).
    NotRequested,
    /// The return path may be forged: not authenticated, not a local network, no valid tag.
    Unverified,
}

impl Reason {
    pub const ALL: [Reason; 5] = [
        Reason::NullSender,
        Reason::Automatic,
        Reason::NotifyNever,
        Reason::NotRequested,
        Reason::Unverified,
    ];

    /// Whether a classic MTA would have sent this report: a failure or delay notice asked for
    /// (or due by default) to a return path we cannot vouch for. Only these are backscatter
    /// prevented (`dsn_suppressed_total`); the others are reports nobody asked for or that no
    /// MTA sends (`dsn_not_requested_total`).
    pub fn prevents_backscatter(self) -> bool {
        matches!(self, Reason::Unverified | Reason::Automatic)
    }

    /// The label for logs and the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Reason::NullSender => "null_sender",
            Reason::Automatic => "automatic",
            Reason::NotifyNever => "notify_never",
            Reason::NotRequested => "not_requested",
            Reason::Unverified => "unverified",
        }
    }
}

/// Whether `event` for a recipient with `notify` was asked for at all (or is due by default):
/// `Some(reason)` when not. Needs nothing but the return path and NOTIFY, so it comes first:
/// most deliveries end here, without the message being read.
pub fn requested(path: &ReversePath, notify: Notify, event: Event) -> Option<Reason> {
    if matches!(path, ReversePath::Null) {
        return Some(Reason::NullSender);
    }
    let asked = match (notify, event) {
        (Notify::Never, _) => return Some(Reason::NotifyNever),
        // Without NOTIFY: failures, and delays when notices are configured (RFC 3461 4.1).
        (Notify::Default, Event::Failed | Event::Delayed) => true,
        (Notify::Default, Event::Delivered | Event::Relayed) => false,
        (Notify::On { failure, .. }, Event::Failed) => failure,
        (Notify::On { delay, .. }, Event::Delayed) => delay,
        (Notify::On { success, .. }, Event::Delivered | Event::Relayed) => success,
    };
    (!asked).then_some(Reason::NotRequested)
}

/// Whether `event` for a recipient with `notify` is reported to the sender. In order: a
/// report nobody asked for (or a bounce of a bounce) is never one; then an automatic message
/// is not answered; then only a return path we can vouch for gets it.
pub fn decide(sender: &Sender<'_>, notify: Notify, event: Event) -> Decision {
    use Decision::{Send, Suppress};
    if let Some(reason) = requested(sender.path, notify, event) {
        return Suppress(reason);
    }
    if sender.automatic {
        return Suppress(Reason::Automatic);
    }
    let trusted = match sender.trust {
        TrustClass::Authenticated { .. } | TrustClass::LocalNetwork => true,
        TrustClass::Unverified => sender.batv_valid,
    };
    if !trusted {
        return Suppress(Reason::Unverified);
    }
    Send
}

/// Whether a message is a report or automatic, from its header: `Auto-Submitted:` with a
/// value other than `no` (RFC 3834), or a `multipart/report` content type (RFC 6522).
pub fn is_automatic(message: &[u8]) -> bool {
    let Some(parsed) = mail_parser::MessageParser::new().parse_headers(message) else {
        return false;
    };
    let auto_submitted = parsed
        .header_raw("Auto-Submitted")
        .map(|v| {
            v.trim()
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|v| v != "no");
    let report = parsed.header_raw("Content-Type").is_some_and(|v| {
        v.trim()
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("multipart/report"))
    });
    auto_submitted || report
}

#[cfg(test)]
mod tests;
