use std::time::Duration;

use backstop_types::{
    Address, BodyType, ClientInfo, DsnParams, Envelope, Notify, Recipient, RecipientState,
    ReversePath, TrustClass,
};

use super::*;
use crate::scheduler::{PassReport, Scheduler};

/// One pass of a scheduler over everything due at `now`, waiting until it is recorded.
async fn pass(agent: &Agent, now: UnixTime) -> PassReport {
    Scheduler::new(agent.limits, backstop_types::clock::system())
        .drain(agent, now)
        .await
}

/// An envelope from a stranger (sender@example.org) to `recipients`.
pub(crate) fn envelope(recipients: &[&str], arrival: UnixTime) -> Envelope {
    Envelope {
        sender: ReversePath::Address(Address::parse("sender@example.org").unwrap()),
        recipients: recipients
            .iter()
            .map(|r| Recipient {
                address: Address::parse(r).unwrap(),
                notify: Notify::Default,
                orcpt: None,
            })
            .collect(),
        dsn: DsnParams {
            ret: None,
            envid: None,
        },
        body_type: BodyType::SevenBit,
        smtputf8: false,
        client: ClientInfo {
            ip: "192.0.2.1".parse().unwrap(),
            helo: "client.example.org".into(),
            ptr: None,
            tls: None,
            auth: None,
            listener: "mx".into(),
        },
        arrival,
        trust: TrustClass::Unverified,
    }
}

pub(crate) fn agent(dir: &std::path::Path) -> Agent {
    Agent {
        queue: Queue::open(&dir.join("queue")).unwrap(),
        routes: Routes {
            local_domains: vec![Domain::parse("example.test").unwrap()],
            maildir: dir.join("maildir"),
            routes: Vec::new(),
        },
        retry: RetryPolicy {
            min_backoff: Duration::from_secs(300),
            max_backoff: Duration::from_secs(3600),
            lifetime: Duration::from_secs(5 * 86_400),
        },
        hostname: "mx.test".into(),
        resolver: None,
        signing: Arc::new(Signing {
            batv: None,
            dkim: Arc::default(),
        }),
        limits: Limits {
            connections: 4,
            per_destination: 2,
            initial_window: 2,
            dead_after: 3,
            dead_backoff: Duration::from_secs(60),
            in_flight: 100,
            idle: crate::scheduler::IDLE,
        },
        reports: crate::report::Settings {
            delay_warnings: Vec::new(),
            counters: Arc::default(),
        },
        own: Arc::default(),
        site_sent: None,
        memory: backstop_types::budget::MemoryBudget::new(1 << 30),
    }
}

#[tokio::test]
async fn local_recipients_land_in_maildirs_and_others_wait() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let t0 = UnixTime(1_800_000_000);
    let id = agent
        .queue
        .enqueue(
            &envelope(&["bob@example.test", "carol@elsewhere.example"], t0),
            b"Subject: hi\r\n\r\nhello\r\n".to_vec(),
        )
        .await
        .unwrap();
    let report = pass(&agent, t0).await;
    assert_eq!(
        report,
        PassReport {
            messages: 1,
            delivered: 1,
            deferred: 1,
            failed: 0
        }
    );
    let new = dir.path().join("maildir/example.test/bob/new");
    assert_eq!(std::fs::read_dir(&new).unwrap().count(), 1);
    // bob is delivered, carol waits with the reason and the backoff.
    let entry = agent.queue.message(id).unwrap().unwrap().entry;
    assert!(matches!(entry.states[0], RecipientState::Delivered { .. }));
    let RecipientState::Pending {
        attempts,
        next_attempt,
        last: Some(last),
    } = &entry.states[1]
    else {
        panic!("{:?}", entry.states[1])
    };
    assert_eq!((*attempts, *next_attempt), (1, UnixTime(t0.0 + 300)));
    assert_eq!(last.reply.status, Some(EnhancedStatus(4, 4, 0)));
    // Nothing is due again before the backoff; bob is not delivered twice.
    assert_eq!(pass(&agent, UnixTime(t0.0 + 299)).await.messages, 0);
    let report = pass(&agent, UnixTime(t0.0 + 300)).await;
    assert_eq!((report.delivered, report.deferred), (0, 1));
    assert_eq!(std::fs::read_dir(&new).unwrap().count(), 1);

    // After the lifetime carol fails, and the message goes to quarantine: no bounce.
    let end = UnixTime(t0.0 + 5 * 86_400);
    agent.queue.flush(Some(id), end).unwrap();
    let report = pass(&agent, end).await;
    assert_eq!(
        report.deferred, 1,
        "the last attempt is a deferral that expires"
    );
    assert!(agent.queue.message(id).unwrap().is_none());
    let (record, _) = agent.queue.quarantine_show(id).unwrap().unwrap();
    assert!(
        record
            .reason
            .detail
            .starts_with("delivery failed: carol@elsewhere.example: 451 4.4.7 Message expired"),
        "{}",
        record.reason
    );
}

#[tokio::test]
async fn a_message_for_local_recipients_only_leaves_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let t0 = UnixTime(1_800_000_000);
    let id = agent
        .queue
        .enqueue(
            &envelope(&["bob@example.test", "ann@example.test"], t0),
            b"x\r\n".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(pass(&agent, t0).await.delivered, 2);
    assert!(agent.queue.message(id).unwrap().is_none());
    assert!(agent.queue.quarantine_show(id).unwrap().is_none());
}

#[tokio::test]
async fn our_users_failures_are_reported_and_strangers_go_to_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let agent = agent(dir.path());
    let t0 = UnixTime(1_800_000_000);
    let mut ours = envelope(&["carol@elsewhere.example"], t0);
    ours.sender = ReversePath::Address(Address::parse("alice@example.test").unwrap());
    ours.trust = TrustClass::Authenticated {
        user: "alice".into(),
    };
    let theirs = envelope(&["carol@elsewhere.example"], t0);
    let body = b"From: alice@example.test\r\nSubject: mine\r\n\r\nhi\r\n".to_vec();
    let mine = agent.queue.enqueue(&ours, body.clone()).await.unwrap();
    let stranger = agent.queue.enqueue(&theirs, body).await.unwrap();
    pass(&agent, t0).await;

    // After the lifetime both fail (4.4.7).
    let end = UnixTime(t0.0 + 5 * 86_400);
    agent.queue.flush(None, end).unwrap();
    pass(&agent, end).await;
    // The stranger's is quarantined, counted, and nobody hears of it.
    assert!(agent.queue.quarantine_show(stranger).unwrap().is_some());
    assert_eq!(
        agent
            .reports
            .counters
            .suppressed(backstop_dsn::gate::Reason::Unverified),
        1
    );
    // Alice's is reported: not quarantined, and one report queued to her with a null sender.
    assert!(agent.queue.quarantine_show(mine).unwrap().is_none());
    assert_eq!(agent.reports.counters.sent(), 1);
    let queued = agent.queue.list().unwrap();
    assert_eq!(queued.len(), 1, "{queued:?}");
    let report = &queued[0].1.envelope;
    assert_eq!(report.sender, ReversePath::Null);
    assert_eq!(
        report.recipients[0].address.to_string(),
        "alice@example.test"
    );
    assert_eq!(report.recipients[0].notify, Notify::Never);

    // It is delivered like any message: into alice's Maildir here.
    pass(&agent, end).await;
    let new = dir.path().join("maildir/example.test/alice/new");
    let file = std::fs::read_dir(&new).unwrap().next().unwrap().unwrap();
    let text = std::fs::read_to_string(file.path()).unwrap();
    assert!(
        text.contains("Subject: Undelivered Mail Returned to Sender"),
        "{text}"
    );
    assert!(text.contains("Auto-Submitted: auto-replied"), "{text}");
    assert!(
        text.contains(
            "Final-Recipient: rfc822; carol@elsewhere.example\r\nAction: failed\r\nStatus: 4.4.7"
        ),
        "{text}"
    );
    assert!(text.contains("Return-Path: <>"), "{text}");
    assert!(agent.queue.list().unwrap().is_empty());
}

/// Alice's message, authenticated, to `recipients`.
fn alices(recipients: &[&str], t0: UnixTime) -> Envelope {
    let mut e = envelope(recipients, t0);
    e.sender = ReversePath::Address(Address::parse("alice@example.test").unwrap());
    e.trust = TrustClass::Authenticated {
        user: "alice".into(),
    };
    e
}

/// The messages in a local Maildir, oldest name first.
fn maildir(dir: &std::path::Path, mailbox: &str) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir.join("maildir").join(mailbox).join("new"))
        .map(|r| r.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

#[tokio::test]
async fn a_delay_notice_at_the_configured_time_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent(dir.path());
    agent.reports.delay_warnings = vec![Duration::from_secs(3600)];
    let t0 = UnixTime(1_800_000_000);
    agent
        .queue
        .enqueue(
            &alices(&["carol@elsewhere.example"], t0),
            b"Subject: s\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .unwrap();
    // Before the hour: nothing; after it: one notice; later attempts: no second one.
    for t in [t0.0, t0.0 + 1800, t0.0 + 3700, t0.0 + 7300] {
        agent.queue.flush(None, UnixTime(t)).unwrap();
        pass(&agent, UnixTime(t)).await;
        pass(&agent, UnixTime(t)).await;
    }
    let reports = maildir(dir.path(), "example.test/alice");
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    assert!(
        report.contains("Subject: Delayed Mail (still being retried)"),
        "{report}"
    );
    assert!(
        report.contains("Action: delayed\r\nStatus: 4.4.0"),
        "{report}"
    );
    // Will-Retry-Until: arrival plus the five-day lifetime.
    let until = UnixTime(t0.0 + 5 * 86_400).to_rfc5322();
    assert!(
        report.contains(&format!("Will-Retry-Until: {until}")),
        "{report}"
    );
}

#[tokio::test]
async fn success_reports_only_when_asked_and_signed_by_the_reporting_domain() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent(dir.path());
    // An Ed25519 key for the reporting host's domain (the agent's hostname is mx.test).
    let pkcs8 = mail_auth::common::crypto::Ed25519Key::generate_pkcs8().unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &pkcs8)
    );
    let key_file = dir.path().join("mx.test.pem");
    std::fs::write(&key_file, pem).unwrap();
    let key =
        crate::dkim::DomainKey::load(Domain::parse("mx.test").unwrap(), "s1", &key_file).unwrap();
    agent.signing = Arc::new(Signing {
        batv: None,
        dkim: Arc::new(crate::dkim::Keys::new(vec![key])),
    });
    let t0 = UnixTime(1_800_000_000);
    let mut asked = alices(&["bob@example.test", "dave@example.test"], t0);
    asked.recipients[0].notify = Notify::On {
        success: true,
        failure: true,
        delay: false,
    };
    agent
        .queue
        .enqueue(&asked, b"Subject: s\r\n\r\nx\r\n".to_vec())
        .await
        .unwrap();
    pass(&agent, t0).await;
    pass(&agent, t0).await;
    let reports = maildir(dir.path(), "example.test/alice");
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    assert!(
        report.contains("Subject: Successful Mail Delivery Report"),
        "{report}"
    );
    assert!(
        report.contains("Final-Recipient: rfc822; bob@example.test\r\nAction: delivered"),
        "{report}"
    );
    assert!(!report.contains("dave@"), "{report}");
    assert!(
        report.contains("DKIM-Signature: v=1; a=ed25519-sha256;"),
        "{report}"
    );
    assert!(report.contains(" d=mx.test;"), "{report}");
}
