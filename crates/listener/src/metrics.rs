//! What the listeners count, for the metrics: sessions (total and open), messages accepted,
//! quarantined and discarded, every refusal by the stage of the session and the reason (the
//! enhanced status code of the reply), and how long the checks before the reply to DATA take.

use backstop_types::prometheus::{Kind, Text};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Debug, Default)]
pub struct SmtpMetrics {
    sessions: AtomicU64,
    open: AtomicU64,
    accepted: AtomicU64,
    quarantined: AtomicU64,
    discarded: AtomicU64,
    auth_failures: AtomicU64,
    auth_throttled: AtomicU64,
    rejections: Mutex<BTreeMap<(&'static str, &'static str, String), u64>>,
    /// Checks before the reply to DATA: count per bucket (not cumulative), sum in µs, count.
    check_buckets: [AtomicU64; BUCKETS.len()],
    check_micros: AtomicU64,
    checks: AtomicU64,
}

/// Counts a session open while it lives.
pub struct OpenSession<'a>(&'a SmtpMetrics);

impl Drop for OpenSession<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl SmtpMetrics {
    pub fn session(&self) -> OpenSession<'_> {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenSession(self)
    }

    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub fn quarantined(&self) {
        self.quarantined.fetch_add(1, Ordering::Relaxed);
    }

    pub fn discarded(&self) {
        self.discarded.fetch_add(1, Ordering::Relaxed);
    }

    /// A login failed (wrong user or password).
    pub fn auth_failed(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A login was refused unchecked: too many failures from the client or for the name.
    pub fn auth_throttled(&self) {
        self.auth_throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// A refusal at `stage`, decided by `check`, with `code` (the enhanced status code, or
    /// the reply code when it has none).
    pub fn rejected(&self, stage: &'static str, check: &'static str, code: String) {
        *self
            .rejections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((stage, check, code))
            .or_default() += 1;
    }

    /// The checks before the reply to DATA took `took`.
    pub fn checked(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.check_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.check_micros.fetch_add(micros, Ordering::Relaxed);
        self.checks.fetch_add(1, Ordering::Relaxed);
    }

    /// Everything in Prometheus' text format.
    pub fn prometheus(&self) -> Text {
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        let mut out = Text::new();
        for (name, kind, help, value) in [
            (
                "smtp_sessions_total",
                Kind::Counter,
                "SMTP sessions accepted.",
                load(&self.sessions),
            ),
            (
                "smtp_sessions_open",
                Kind::Gauge,
                "SMTP sessions open now.",
                load(&self.open),
            ),
            (
                "smtp_messages_accepted_total",
                Kind::Counter,
                "Messages accepted into the queue (250 after sync).",
                load(&self.accepted),
            ),
            (
                "smtp_messages_quarantined_total",
                Kind::Counter,
                "Messages accepted into quarantine by a check.",
                load(&self.quarantined),
            ),
            (
                "smtp_messages_discarded_total",
                Kind::Counter,
                "Messages a check discarded (250, kept nowhere).",
                load(&self.discarded),
            ),
            (
                "smtp_auth_failures_total",
                Kind::Counter,
                "Failed logins (wrong user name or password).",
                load(&self.auth_failures),
            ),
            (
                "smtp_auth_throttled_total",
                Kind::Counter,
                "Logins refused unchecked (454 4.7.0) after too many failures from the client or for the name.",
                load(&self.auth_throttled),
            ),
        ] {
            out.single(name, kind, help, value);
        }
        out.family(
            "smtp_rejections_total",
            Kind::Counter,
            "Replies refusing or deferring something, by stage, the check that decided, and code.",
        );
        for ((stage, check, code), n) in self
            .rejections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            out.sample(
                "smtp_rejections_total",
                &[("stage", stage), ("check", check), ("code", code)],
                n,
            );
        }
        out.family(
            "smtp_content_check_seconds",
            Kind::Histogram,
            "Time from the end of DATA to the checks' verdict.",
        );
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.check_buckets) {
            cumulative += load(n);
            out.sample(
                "smtp_content_check_seconds_bucket",
                &[("le", &bound.to_string())],
                cumulative,
            );
        }
        let count = load(&self.checks);
        out.sample(
            "smtp_content_check_seconds_bucket",
            &[("le", "+Inf")],
            count,
        )
        .sample(
            "smtp_content_check_seconds_sum",
            &[],
            load(&self.check_micros) as f64 / 1e6,
        )
        .sample("smtp_content_check_seconds_count", &[], count);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format() {
        let m = SmtpMetrics::default();
        {
            let _open = m.session();
            m.accepted();
            m.rejected("rcpt", "recipients", "5.1.1".into());
            m.rejected("rcpt", "recipients", "5.1.1".into());
            m.checked(Duration::from_millis(7));
            m.checked(Duration::from_secs(60));
            assert!(m.prometheus().finish().contains("smtp_sessions_open 1\n"));
        }
        let text = m.prometheus().finish();
        for line in [
            "smtp_sessions_total 1\n",
            "smtp_sessions_open 0\n",
            "smtp_messages_accepted_total 1\n",
            "smtp_rejections_total{stage=\"rcpt\",check=\"recipients\",code=\"5.1.1\"} 2\n",
            "smtp_content_check_seconds_bucket{le=\"0.005\"} 0\n",
            "smtp_content_check_seconds_bucket{le=\"0.01\"} 1\n",
            "smtp_content_check_seconds_bucket{le=\"30\"} 1\n",
            "smtp_content_check_seconds_bucket{le=\"+Inf\"} 2\n",
            "smtp_content_check_seconds_sum 60.007\n",
            "smtp_content_check_seconds_count 2\n",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }
}
