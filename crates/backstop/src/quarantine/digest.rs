//! Per-recipient digests: what is newly held for each local mailbox, in one message.
//!
//! A digest lists only copies the recipient owns (an inbound verdict on a local mailbox),
//! still held and not listed before; a suppressed report, a hold, or a copy for a remote
//! recipient is the administrator's and never appears. It comes from the site's postmaster
//! address with `Auto-Submitted: auto-generated` and a null return path, DKIM-signed by the
//! From domain's key, and goes through the queue like any message. Every string taken from a
//! quarantined message is escaped for HTML and made one line; the HTML has no images and no
//! link but our release links (a virus verdict has none: it is listed as the administrator's
//! to release).

use std::collections::BTreeMap;

use backstop_queue::{HeldState, QuarantineRecord, Queue};
use backstop_types::quarantine::{Owner, ReasonKind};
use backstop_types::text::Escaped;
use backstop_types::{Address, Envelope, QueueId, UnixTime};
use backstop_web::html::Html;
use mail_builder::headers::address::Address as MailAddress;
use mail_builder::headers::raw::Raw;
use mail_builder::MessageBuilder;
use tracing::{info, warn};

use super::Runtime;

/// What a digest and a release page show of a held message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub from: String,
    pub subject: String,
    pub date: String,
    pub sender: String,
    pub why: String,
}

impl Shown {
    /// From the record and the message's header section; every string one line, at most 200
    /// characters (escaping for HTML is the page's).
    pub fn of(record: &QuarantineRecord, head: &[u8]) -> Shown {
        let parsed = mail_parser::MessageParser::new().parse_headers(head);
        let from = parsed
            .as_ref()
            .and_then(|m| m.from())
            .and_then(|a| a.first())
            .map(|a| match (a.name(), a.address()) {
                (Some(name), Some(address)) => format!("{name} <{address}>"),
                (None, Some(address)) => address.to_owned(),
                (Some(name), None) => name.to_owned(),
                (None, None) => String::new(),
            })
            .unwrap_or_default();
        let subject = parsed
            .as_ref()
            .and_then(|m| m.subject())
            .unwrap_or("(no subject)")
            .to_owned();
        let date = parsed
            .as_ref()
            .and_then(|m| m.date())
            .map(|d| d.to_rfc822())
            .unwrap_or_default();
        let why = match record.reason.kind {
            ReasonKind::Content if record.reason.is_virus() => {
                "a virus scanner found malware in it".to_owned()
            }
            ReasonKind::Content => format!(
                "a content check ({}) held it",
                if record.reason.scanner.is_empty() {
                    "filter"
                } else {
                    &record.reason.scanner
                }
            ),
            ReasonKind::Dmarc => "its sender's domain says it may be forged (DMARC)".to_owned(),
            ReasonKind::Undeliverable => "it could not be delivered".to_owned(),
            ReasonKind::Hold => "the administrator is holding it".to_owned(),
        };
        let short = |s: &str| {
            let line: String = s
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            match line.char_indices().nth(200) {
                Some((at, _)) => format!("{}…", &line[..at]),
                None => line,
            }
        };
        Shown {
            from: short(&from),
            subject: short(&subject),
            date: short(&date),
            sender: short(&record.envelope.sender.to_string()),
            why,
        }
    }
}

impl Shown {
    /// The same with every link and host name made inert (`hxxps[:]//evil[.]example`), as a
    /// digest shows them: a mail client turns a URL or a host name in text into a live link,
    /// and a digest comes signed from the postmaster.
    pub fn defanged(&self) -> Shown {
        Shown {
            from: defang(&self.from),
            subject: defang(&self.subject),
            date: self.date.clone(),
            sender: defang(&self.sender),
            why: self.why.clone(),
        }
    }
}

/// `text` with each word that is or holds a URL or a host name made inert.
pub(crate) fn defang(text: &str) -> String {
    text.split(' ')
        .map(|word| {
            let lower = word.to_ascii_lowercase();
            if lower.contains("://") || lower.contains("www.") || host_like(word) {
                word.replace("http", "hxxp")
                    .replace("HTTP", "HXXP")
                    .replace("://", "[:]//")
                    .replace('.', "[.]")
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `word` holds a host name: a dot between a letter or digit and a label of two or
/// more letters (`evil.example`, `paypal.com/login`, `a@b.example`).
fn host_like(word: &str) -> bool {
    let chars: Vec<char> = word.chars().collect();
    chars.iter().enumerate().any(|(i, c)| {
        *c == '.'
            && i > 0
            && chars[i - 1].is_alphanumeric()
            && chars[i + 1..]
                .iter()
                .take_while(|c| c.is_alphabetic())
                .count()
                >= 2
    })
}

/// The most items one digest lists; a recipient with more gets the rest in the next ones.
const MAX_ITEMS: usize = 200;

/// One item of a digest.
struct Item {
    id: QueueId,
    index: usize,
    shown: Shown,
    at: UnixTime,
    token: Option<String>,
}

/// A digest ready to queue: its recipient, the message, and what it lists.
pub struct Digest {
    pub recipient: Address,
    pub message: Vec<u8>,
    pub listed: Vec<(QueueId, usize)>,
}

/// The digests due now: one per local mailbox with copies it owns, held and not listed yet.
/// Blocking: it reads the whole quarantine.
pub fn due(queue: &Queue, runtime: &Runtime, now: UnixTime) -> anyhow::Result<Vec<Digest>> {
    // Per recipient: its address, the items listed, and how many more wait for a later digest.
    let mut by_recipient: BTreeMap<String, (Address, Vec<Item>, usize)> = BTreeMap::new();
    queue.each_quarantined(|id, record| {
        // What the items show of the message, read and parsed once for all its recipients.
        let mut shown = None;
        for (index, (recipient, held)) in record
            .envelope
            .recipients
            .iter()
            .zip(&record.held)
            .enumerate()
        {
            let local = runtime.local_domains.contains(recipient.address.domain());
            // Past its retention it is about to go: not worth listing.
            let retention_over = record
                .at
                .0
                .saturating_add(runtime.retention(record.reason.kind).as_secs())
                <= now.0;
            if held.owner != Owner::Recipient
                || held.state != HeldState::Held
                || held.notified
                || !local
                || retention_over
            {
                continue;
            }
            let key = recipient.address.to_string().to_ascii_lowercase();
            if let Some((_, items, more)) = by_recipient.get_mut(&key) {
                if items.len() >= MAX_ITEMS {
                    // The rest stay unlisted, for the next digest.
                    *more += 1;
                    continue;
                }
            }
            let shown = match &mut shown {
                Some(shown) => shown,
                None => shown.insert(Shown::of(&record, &queue.quarantine_head(id)?)),
            };
            let item = Item {
                id,
                index,
                shown: shown.clone(),
                at: record.at,
                token: runtime.token_for(id, &record, index, now),
            };
            by_recipient
                .entry(key)
                .or_insert_with(|| (recipient.address.clone(), Vec::new(), 0))
                .1
                .push(item);
        }
        Ok(())
    })?;
    Ok(by_recipient
        .into_values()
        .map(|(recipient, items, more)| {
            let message = compose(runtime, &recipient, &items, more, now);
            Digest {
                recipient,
                message,
                listed: items.iter().map(|i| (i.id, i.index)).collect(),
            }
        })
        .collect())
}

/// The digest's From: `[quarantine] digest_from`, else postmaster at the first local domain,
/// else at the host name.
pub fn from_address(runtime: &Runtime) -> String {
    match (&runtime.settings.digest_from, runtime.local_domains.first()) {
        (Some(from), _) => from.to_string(),
        (None, Some(domain)) => format!("postmaster@{domain}"),
        (None, None) => format!("postmaster@{}", runtime.hostname),
    }
}

fn compose(
    runtime: &Runtime,
    recipient: &Address,
    items: &[Item],
    more: usize,
    now: UnixTime,
) -> Vec<u8> {
    let from = from_address(runtime);
    let link = |token: &str| {
        runtime
            .settings
            .url
            .as_ref()
            .map(|url| format!("{url}/release/{token}"))
    };
    let mut text = format!(
        "{} message(s) addressed to you are held in quarantine at {}.\r\n\
         They have not been delivered. Each one below says why; a link opens a page where you\r\n\
         can have it delivered or deleted. Messages you do nothing about are deleted when\r\n\
         their time in quarantine is over.\r\n\r\n",
        items.len(),
        runtime.hostname
    );
    let mut html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Held messages</title></head><body>\
         <p>{} message(s) addressed to you are held in quarantine at {}. They have not been delivered.</p>\
         <table border=\"1\" cellpadding=\"4\" cellspacing=\"0\">\
         <tr><th>Held since</th><th>From</th><th>Subject</th><th>Why</th><th></th></tr>",
        items.len(),
        Html(&runtime.hostname)
    );
    for item in items {
        let s = &item.shown.defanged();
        let action = match (&item.token, item.token.as_deref().and_then(link)) {
            (Some(_), Some(url)) => (
                format!("Review: {url}"),
                format!("<a href=\"{}\">Review and release</a>", Html(&url)),
            ),
            (Some(_), None) => (
                "Ask your mail administrator to release it.".to_owned(),
                "Ask your mail administrator".to_owned(),
            ),
            (None, _) => (
                "Only your mail administrator can release it.".to_owned(),
                "Only your mail administrator can release it".to_owned(),
            ),
        };
        text.push_str(&format!(
            "* {}\r\n  From: {}\r\n  Subject: {}\r\n  Why: {}\r\n  {}\r\n\r\n",
            item.at.to_rfc5322(),
            Escaped(&s.from),
            Escaped(&s.subject),
            s.why,
            action.0
        ));
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            Html(&item.at.to_rfc5322()),
            Html(&s.from),
            Html(&s.subject),
            Html(&s.why),
            action.1
        ));
    }
    if more > 0 {
        text.push_str(&format!(
            "{more} more held message(s) will be listed in the next digest.\r\n"
        ));
        html.push_str(&format!(
            "</table><p>{more} more held message(s) will be listed in the next digest.</p>"
        ));
    } else {
        html.push_str("</table>");
    }
    html.push_str("</body></html>");
    let message_id = format!(
        "<digest.{}.{}@{}>",
        now.0,
        fastrand_suffix(),
        runtime.hostname
    );
    MessageBuilder::new()
        .from(MailAddress::new_address(Some("Quarantine"), from))
        .to(MailAddress::new_address(
            None::<&str>,
            recipient.to_string(),
        ))
        .subject(format!("{} message(s) held for you", items.len()))
        .header("Auto-Submitted", Raw::new("auto-generated"))
        .header("X-Auto-Response-Suppress", Raw::new("All"))
        .header("Date", Raw::new(now.to_rfc5322()))
        .message_id(message_id.trim_start_matches('<').trim_end_matches('>'))
        .text_body(text)
        .html_body(html)
        .write_to_vec()
        .unwrap_or_default()
}

fn fastrand_suffix() -> String {
    let mut bytes = [0u8; 6];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Signs, queues and marks every digest due now; how many were queued.
pub async fn send_due(
    queue: &Queue,
    runtime: &std::sync::Arc<Runtime>,
    dkim: &backstop_delivery::dkim::Keys,
    now: UnixTime,
) -> anyhow::Result<usize> {
    // One run at a time: a manual run beside the scheduled one would list the same items.
    let _one = runtime.digests.lock().await;
    let digests = {
        let (queue, runtime) = (queue.clone(), std::sync::Arc::clone(runtime));
        tokio::task::spawn_blocking(move || due(&queue, &runtime, now)).await??
    };
    let mut sent = 0;
    for digest in digests {
        let message = match dkim.sign(&digest.message) {
            Some(Ok(signature)) => [signature.as_bytes(), &digest.message].concat(),
            Some(Err(e)) => {
                warn!(error = %e, "quarantine digest not DKIM-signed");
                digest.message
            }
            None => {
                warn!(from = %Escaped(&from_address(runtime)), "quarantine digest not DKIM-signed: no [[dkim]] key for its From domain");
                digest.message
            }
        };
        let envelope = Envelope::own_notice(
            &digest.recipient,
            &runtime.hostname,
            "quarantine-digest",
            now,
            message.is_ascii(),
        );
        let id = match queue.enqueue(&envelope, message).await {
            Ok(id) => id,
            Err(e) => {
                warn!(to = %Escaped(&digest.recipient.to_string()), error = %e, "quarantine digest not queued; tried again next time");
                continue;
            }
        };
        for (held, indices) in group(&digest.listed) {
            let queue = queue.clone();
            let marked =
                tokio::task::spawn_blocking(move || queue.quarantine_notified(held, &indices))
                    .await;
            if !matches!(marked, Ok(Ok(()))) {
                warn!(queue_id = %held, "quarantine digest sent but its items not marked: they may be listed again");
            }
        }
        runtime.counters.digest_sent();
        info!(queue_id = %id, to = %Escaped(&digest.recipient.to_string()), items = digest.listed.len(), "quarantine digest queued");
        sent += 1;
    }
    Ok(sent)
}

/// The listed items by message.
fn group(listed: &[(QueueId, usize)]) -> Vec<(QueueId, Vec<usize>)> {
    let mut out: Vec<(QueueId, Vec<usize>)> = Vec::new();
    for &(id, index) in listed {
        match out.iter_mut().find(|(i, _)| *i == id) {
            Some((_, indices)) => indices.push(index),
            None => out.push((id, vec![index])),
        }
    }
    out
}

/// Sends the digests every `[quarantine] digest` interval until `shutdown`.
pub async fn run(
    queue: Queue,
    runtime: std::sync::Arc<Runtime>,
    delivery: tokio::sync::watch::Receiver<backstop_delivery::agent::Agent>,
    clock: std::sync::Arc<dyn backstop_types::Clock>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Some(every) = runtime.settings.digest_every else {
        return;
    };
    // When the last run was, kept across restarts (a server restarted daily still sends its
    // daily digests); the first start counts from now.
    let stamp = runtime.dir.join("digest.last");
    loop {
        let now = clock.now();
        let last = match read_stamp(&stamp) {
            Some(last) if last.0 <= now.0 => last,
            _ => {
                write_stamp(&stamp, now);
                now
            }
        };
        let wait = last.0.saturating_add(every.as_secs()).saturating_sub(now.0);
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(wait)) => {}
            _ = shutdown.changed() => return,
        }
        let dkim = std::sync::Arc::clone(&delivery.borrow().signing.dkim);
        match send_due(&queue, &runtime, &dkim, clock.now()).await {
            Ok(0) => {}
            Ok(n) => info!(digests = n, "quarantine digests queued"),
            Err(e) => warn!(error = %e, "quarantine digests"),
        }
        write_stamp(&stamp, clock.now());
    }
}

fn read_stamp(file: &std::path::Path) -> Option<UnixTime> {
    let text = std::fs::read_to_string(file).ok()?;
    text.trim().parse().ok().map(UnixTime)
}

fn write_stamp(file: &std::path::Path, at: UnixTime) {
    let written = file
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(file, format!("{}\n", at.0)));
    if let Err(e) = written {
        warn!(file = %file.display(), error = %e, "cannot keep the time of the last quarantine digest");
    }
}
