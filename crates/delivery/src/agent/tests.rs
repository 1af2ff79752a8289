use std::time::Duration;

use backstop_types::{
    Address, BodyType, ClientInfo, DsnParams, Envelope, Notify, Recipient, ReversePath, TrustClass,
};

use super::*;

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

fn agent(dir: &std::path::Path) -> Agent {
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
        },
        pool: Arc::default(),
        slots: Arc::default(),
        reports: crate::report::Settings {
            delay_warnings: Vec::new(),
            counters: Arc::default(),
        },
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
    let report = agent.pass(t0).unwrap();
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
    assert_eq!(agent.pass(UnixTime(t0.0 + 299)).unwrap().messages, 0);
    let report = agent.pass(UnixTime(t0.0 + 300)).unwrap();
    assert_eq!((report.delivered, report.deferred), (0, 1));
    assert_eq!(std::fs::read_dir(&new).unwrap().count(), 1);

    // After the lifetime carol fails, and the message goes to quarantine: no bounce.
    let end = UnixTime(t0.0 + 5 * 86_400);
    agent.queue.flush(Some(id), end).unwrap();
    let report = agent.pass(end).unwrap();
    assert_eq!(
        report.deferred, 1,
        "the last attempt is a deferral that expires"
    );
    assert!(agent.queue.message(id).unwrap().is_none());
    let (record, _) = agent.queue.quarantine_show(id).unwrap().unwrap();
    assert!(
        record
            .reason
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
    assert_eq!(agent.pass(t0).unwrap().delivered, 2);
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
    agent.pass(t0).unwrap();

    // After the lifetime both fail (4.4.7).
    let end = UnixTime(t0.0 + 5 * 86_400);
    agent.queue.flush(None, end).unwrap();
    agent.pass(end).unwrap();
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
    agent.pass(end).unwrap();
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
