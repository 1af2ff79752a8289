//! `backstop report`: a summary of a stretch of backstop's log, as pflogsumm gives one of
//! Postfix's: what was accepted, delivered, deferred, failed and refused (by the check that
//! decided), the backscatter prevented, the busiest sender and recipient domains, the
//! commonest reasons for deferral. It reads the log lines backstop writes (text or JSON), from
//! files or standard input (`journalctl -u backstop -o cat | backstop report`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// What a stretch of log came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub lines: u64,
    pub accepted: u64,
    pub accepted_bytes: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub failed: u64,
    pub refused: u64,
    pub reports_sent: u64,
    pub backscatter_prevented: u64,
    pub quarantined: u64,
    pub refused_by_check: BTreeMap<String, u64>,
    pub senders: BTreeMap<String, u64>,
    pub recipients: BTreeMap<String, u64>,
    pub deferral_replies: BTreeMap<String, u64>,
    /// The first and last timestamps read.
    pub from: Option<String>,
    pub to: Option<String>,
}

/// A field of an event by its key.
type Fields<'a> = Box<dyn Fn(&str) -> Option<String> + 'a>;

/// One log event: its message and its fields (the span fields are not needed).
struct Event<'a> {
    timestamp: Option<String>,
    message: String,
    field: Fields<'a>,
}

/// The keys backstop's summary reads; in a text line a value runs to the next of them.
const KEYS: &[&str] = &[
    "queue_id",
    "from",
    "to",
    "recipients",
    "size",
    "message_id",
    "relay",
    "delay",
    "reply",
    "status",
    "stage",
    "check",
    "helo",
    "sender",
    "recipient",
    "event",
    "reason",
    "action",
];

impl Summary {
    /// Reads one line of the log; lines that are not backstop's events are counted, nothing
    /// more. `since` (RFC 3339, UTC): events before it are skipped.
    pub fn read(&mut self, line: &str, since: Option<&str>) {
        self.lines += 1;
        let Some(event) = parse(line) else { return };
        if let (Some(since), Some(at)) = (since, &event.timestamp) {
            if at.as_str() < since {
                return;
            }
        }
        if let Some(at) = &event.timestamp {
            if self.from.is_none() {
                self.from = Some(at.clone());
            }
            self.to = Some(at.clone());
        }
        let field = |key: &str| (event.field)(key);
        let domain = |address: Option<String>| {
            let address = address?;
            let address = address.trim_start_matches('<').trim_end_matches('>');
            match address.rsplit_once('@') {
                Some((_, domain)) => Some(domain.to_ascii_lowercase()),
                None if address.is_empty() => Some("<>".to_owned()),
                None => None,
            }
        };
        match event.message.as_str() {
            "accepted" => {
                self.accepted += 1;
                self.accepted_bytes += field("size").and_then(|s| s.parse().ok()).unwrap_or(0);
                if let Some(d) = domain(field("from")) {
                    *self.senders.entry(d).or_default() += 1;
                }
            }
            "delivered" => {
                self.delivered += 1;
                if let Some(d) = domain(field("to")) {
                    *self.recipients.entry(d).or_default() += 1;
                }
            }
            "deferred" => {
                self.deferred += 1;
                if let Some(reply) = field("reply") {
                    let relay = field("relay").unwrap_or_default();
                    // The reply's first 80 characters, with its relay: enough to group by.
                    let reply: String = reply.chars().take(80).collect();
                    *self
                        .deferral_replies
                        .entry(format!("{relay}: {reply}"))
                        .or_default() += 1;
                }
            }
            "failed" => self.failed += 1,
            "refused" | "connection refused" | "connection refused: rate limit" => {
                self.refused += 1;
                let check = field("check").unwrap_or_else(|| "protocol".to_owned());
                *self.refused_by_check.entry(check).or_default() += 1;
            }
            "delivery status notification" => self.reports_sent += 1,
            "no delivery status notification: backscatter prevented" => {
                self.backscatter_prevented += 1;
            }
            "delivery failed: quarantined, no bounce" | "accepted into quarantine" => {
                self.quarantined += 1;
            }
            _ => {}
        }
    }

    /// The summary as text.
    pub fn render(&self, top: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "backstop log summary: {} to {} ({} lines)\n",
            self.from.as_deref().unwrap_or("-"),
            self.to.as_deref().unwrap_or("-"),
            self.lines
        );
        let _ = writeln!(out, "Grand totals");
        for (n, what) in [
            (self.accepted, "accepted"),
            (self.delivered, "delivered (per recipient)"),
            (self.deferred, "deferred (per recipient and attempt)"),
            (self.failed, "failed (per recipient)"),
            (self.refused, "refused in session (4xx and 5xx replies)"),
            (self.reports_sent, "delivery reports sent to our senders"),
            (
                self.backscatter_prevented,
                "bounces to unverifiable senders prevented",
            ),
            (self.quarantined, "quarantined"),
        ] {
            let _ = writeln!(out, "{n:>10}  {what}");
        }
        let _ = writeln!(out, "{:>10}  bytes accepted\n", self.accepted_bytes);
        let mut section = |title: &str, map: &BTreeMap<String, u64>| {
            if map.is_empty() {
                return;
            }
            let mut rows: Vec<(&String, &u64)> = map.iter().collect();
            rows.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
            let _ = writeln!(out, "{title}");
            for (name, n) in rows.into_iter().take(top) {
                let _ = writeln!(out, "{n:>10}  {}", backstop_types::text::Escaped(name));
            }
            out.push('\n');
        };
        section("Refusals by the check that decided", &self.refused_by_check);
        section("Sender domains, by messages accepted", &self.senders);
        section("Recipient domains, by deliveries", &self.recipients);
        section("Deferrals, by relay and reply", &self.deferral_replies);
        out
    }
}

/// A log line as an event: JSON (`[log] format = "json"`) or text.
fn parse(line: &str) -> Option<Event<'_>> {
    let line = line.trim_end();
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        let fields = value.get("fields")?.clone();
        let message = fields.get("message")?.as_str()?.to_owned();
        let timestamp = value
            .get("timestamp")
            .and_then(|t| t.as_str())
            .map(str::to_owned);
        return Some(Event {
            timestamp,
            message,
            field: Box::new(move |key| {
                fields.get(key).map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            }),
        });
    }
    // "2026-12-02T01:50:12.348851Z  INFO spans: target: message key=value ..."
    let (timestamp, rest) = line.split_once(' ')?;
    if !timestamp.contains('T') {
        return None;
    }
    let rest = rest.trim_start();
    let (_level, rest) = rest.split_once(' ')?;
    // The target ("backstop_x::y: ") follows the spans, if there are any.
    let rest = match rest.starts_with("backstop") {
        true => rest,
        false => &rest[rest.find(": backstop")? + 2..],
    };
    let (_target, event) = rest.split_once(": ")?;
    // The message runs to the first known key.
    let starts: Vec<(usize, &str)> = KEYS
        .iter()
        .filter_map(|key| {
            let needle = format!(" {key}=");
            event.find(&needle).map(|at| (at, *key))
        })
        .collect();
    let message_end = starts
        .iter()
        .map(|(at, _)| *at)
        .min()
        .unwrap_or(event.len());
    let message = event[..message_end].to_owned();
    let event = event.to_owned();
    Some(Event {
        timestamp: Some(timestamp.to_owned()),
        message,
        field: Box::new(move |key| {
            let needle = format!(" {key}=");
            let start = event.find(&needle)? + needle.len();
            let end = KEYS
                .iter()
                .filter_map(|k| event[start..].find(&format!(" {k}=")))
                .min()
                .map_or(event.len(), |e| start + e);
            let value = &event[start..end];
            Some(
                value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(value)
                    .to_owned(),
            )
        }),
    })
}

/// The time `ago` before now, as RFC 3339 in UTC to the second without the zone letter, for
/// comparing with log lines' timestamps as text (a line of that very second, with its
/// fraction, compares after it).
pub fn since(ago: std::time::Duration) -> String {
    use backstop_types::Clock as _;
    let now = backstop_types::SystemClock.now();
    let at = backstop_types::UnixTime(now.0.saturating_sub(ago.as_secs()));
    at.to_rfc3339().trim_end_matches('Z').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"2026-12-02T01:50:08.921267Z  INFO backstop::serve: listening listener=mx address=127.0.0.1:2525
2026-12-02T01:50:12.332259Z  INFO session{id=1796176212326001 peer=127.0.0.1:43778 listener=mx}:txn{n=1}: backstop_listener::server: refused stage="rcpt" check="relay" helo=client.example from=<a@example.org> to=nobody@elsewhere.example reply=554 5.7.1 Relay access denied
2026-12-02T01:50:12.348851Z  INFO session{id=1796176212326001 peer=127.0.0.1:43778 listener=mx}:txn{n=2 queue_id=0006619CDD173741}: backstop_listener::server: accepted queue_id=0006619CDD173741 from=<a@Example.org> recipients=1 size=443 message_id=<m1@example.org>
2026-12-02T01:50:12.564231Z  INFO delivery{queue_id=0006619CDD173741}: backstop_delivery::agent: delivered to=user@example.test from=<a@example.org> relay=local delay=0 reply=250 2.0.0 delivered to maildir as /x status=sent
2026-12-02T01:51:00.000000Z  WARN delivery{queue_id=0006619CDD173742}: backstop_delivery::agent: deferred to=bob@slow.example from=<a@example.org> relay=mx.slow.example[192.0.2.1] delay=60 reply=451 4.7.1 Try again later status=deferred
2026-12-02T01:52:00.000000Z  WARN backstop_queue::schedule: delivery failed: quarantined, no bounce queue_id=0006619CDD173743 reason=x
2026-12-02T01:53:00.000000Z  INFO backstop_listener::server: connection refused check="connections" reply=421 4.7.0 Too many connections from your address, try again later"#;

    #[test]
    fn a_text_log_is_summed_up() {
        let mut s = Summary::default();
        for line in TEXT.lines() {
            s.read(line, None);
        }
        assert_eq!(s.lines, 7);
        assert_eq!((s.accepted, s.accepted_bytes), (1, 443));
        assert_eq!(
            (s.delivered, s.deferred, s.refused, s.quarantined),
            (1, 1, 2, 1)
        );
        assert_eq!(s.refused_by_check["relay"], 1);
        assert_eq!(s.refused_by_check["connections"], 1);
        assert_eq!(s.senders["example.org"], 1);
        assert_eq!(s.recipients["example.test"], 1);
        assert_eq!(
            s.deferral_replies["mx.slow.example[192.0.2.1]: 451 4.7.1 Try again later"],
            1
        );
        assert_eq!(s.from.as_deref(), Some("2026-12-02T01:50:08.921267Z"));
        let shown = s.render(10);
        assert!(shown.contains("         1  accepted\n"), "{shown}");
        assert!(
            shown.contains(
                "Refusals by the check that decided\n         1  connections\n         1  relay\n"
            ),
            "{shown}"
        );
        // Only what came after a point in time.
        let mut later = Summary::default();
        for line in TEXT.lines() {
            later.read(line, Some("2026-12-02T01:50:30"));
        }
        assert_eq!((later.accepted, later.deferred), (0, 1));
    }

    #[test]
    fn a_json_log_is_summed_up() {
        let line = r#"{"timestamp":"2026-12-02T01:50:12.348851Z","level":"INFO","fields":{"message":"refused","stage":"rcpt","check":"greylist","reply":"451 4.7.1 Greylisted"},"target":"backstop_listener::server","spans":[]}"#;
        let mut s = Summary::default();
        s.read(line, None);
        s.read("not a log line", None);
        assert_eq!((s.lines, s.refused), (2, 1));
        assert_eq!(s.refused_by_check["greylist"], 1);
    }

    #[test]
    fn since_is_rfc_3339() {
        let since = since(std::time::Duration::ZERO);
        assert_eq!(since.len(), 19, "{since}");
        assert!(
            since.as_bytes()[10] == b'T' && !since.ends_with('Z'),
            "{since}"
        );
    }
}
