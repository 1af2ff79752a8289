use std::time::Duration;

use backstop_types::{Attempt, AttemptOutcome, EnhancedStatus, RecipientState, RemoteReply};

use super::*;
use crate::record::tests::sample;

const POLICY: RetryPolicy = RetryPolicy {
    min_backoff: Duration::from_secs(300),
    max_backoff: Duration::from_secs(3600),
    lifetime: Duration::from_secs(5 * 86_400),
};

fn reply(code: u16, text: &str) -> Attempt {
    Attempt {
        remote_host: Some("mx.example.org[192.0.2.25]".into()),
        reply: RemoteReply {
            code,
            status: Some(EnhancedStatus((code / 100) as u8, 0, 0)),
            text: text.into(),
        },
    }
}

async fn queue_with_one() -> (tempfile::TempDir, Queue, QueueId, UnixTime) {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let id = queue.enqueue(&sample(), b"body".to_vec()).await.unwrap();
    (dir, queue, id, sample().arrival)
}

#[test]
fn backoff_doubles_from_five_minutes_to_an_hour() {
    let waits: Vec<u64> = (1..=6).map(|n| POLICY.backoff(n).as_secs()).collect();
    assert_eq!(waits, [300, 600, 1200, 2400, 3600, 3600]);
    assert_eq!(POLICY.backoff(1000).as_secs(), 3600);
}

#[tokio::test]
async fn a_lease_hides_the_message_until_it_runs_out() {
    let (_dir, queue, id, t0) = queue_with_one().await;
    assert!(queue
        .lease_due(UnixTime(t0.0 - 1), Duration::from_secs(600), 10)
        .unwrap()
        .is_empty());
    let leased = queue.lease_due(t0, Duration::from_secs(600), 10).unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].0, id);
    // The body is read when it is sent, not with the lease.
    assert_eq!(queue.message(id).unwrap().unwrap().body, b"body");
    // Leased: not handed out again while the lease runs...
    assert!(queue
        .lease_due(UnixTime(t0.0 + 599), Duration::from_secs(600), 10)
        .unwrap()
        .is_empty());
    // ...but again once it has run out (the agent died): at least once, never lost.
    assert_eq!(
        queue
            .lease_due(UnixTime(t0.0 + 600), Duration::from_secs(600), 10)
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_lease_survives_a_restart() {
    let (dir, queue, id, t0) = queue_with_one().await;
    queue.lease_due(t0, Duration::from_secs(600), 10).unwrap();
    drop(queue);
    let queue = Queue::open(dir.path()).unwrap();
    assert_eq!(
        queue
            .lease_due(UnixTime(t0.0 + 600), Duration::from_secs(600), 10)
            .unwrap()[0]
            .0,
        id
    );
}

#[tokio::test]
async fn attempts_reschedule_with_backoff_then_finish() {
    let (_dir, queue, id, t0) = queue_with_one().await;
    // Recipient 0 is deferred, recipient 1 delivered.
    let after = queue
        .record_attempts(
            id,
            &[
                (0, AttemptOutcome::Transient(reply(451, "greylisted"))),
                (1, AttemptOutcome::Delivered(reply(250, "ok"))),
            ],
            t0,
            &POLICY,
        )
        .unwrap();
    let AfterAttempts::Rescheduled { entry, due } = after else {
        panic!("expected a reschedule, got {after:?}")
    };
    assert_eq!(due, UnixTime(t0.0 + 300));
    assert!(matches!(
        entry.states[0],
        RecipientState::Pending { attempts: 1, .. }
    ));
    assert!(matches!(entry.states[1], RecipientState::Delivered { .. }));
    assert_eq!(queue.schedule().unwrap(), vec![(UnixTime(t0.0 + 300), id)]);
    // The second deferral waits twice as long.
    let t1 = UnixTime(t0.0 + 300);
    let after = queue
        .record_attempts(
            id,
            &[(0, AttemptOutcome::Transient(reply(451, "again")))],
            t1,
            &POLICY,
        )
        .unwrap();
    assert!(matches!(after, AfterAttempts::Rescheduled { due, .. } if due == UnixTime(t1.0 + 600)));
    // A permanent failure settles the last pending recipient: the message leaves the queue.
    let after = queue
        .record_attempts(
            id,
            &[(0, AttemptOutcome::Permanent(reply(550, "no such user")))],
            t1,
            &POLICY,
        )
        .unwrap();
    let AfterAttempts::Finished(entry) = after else {
        panic!("expected the end, got {after:?}")
    };
    assert!(
        matches!(&entry.states[0], RecipientState::Failed { last, .. } if last.reply.code == 550)
    );
    assert!(queue.list().unwrap().is_empty());
    assert!(queue.schedule().unwrap().is_empty());
    assert!(queue.message(id).unwrap().is_none());
    // Not bounced: kept in quarantine with the reason, body and all.
    let (record, body) = queue.quarantine_show(id).unwrap().unwrap();
    let failed = &sample().recipients[0].address;
    assert_eq!(
        record.reason,
        backstop_types::quarantine::Reason::undeliverable(format!(
            "delivery failed: {failed}: 550 5.0.0 no such user (from mx.example.org[192.0.2.25])"
        ))
    );
    assert!(record
        .held
        .iter()
        .all(|h| h.owner == backstop_types::quarantine::Owner::Admin));
    assert_eq!(body, b"body");
}

#[tokio::test]
async fn recipients_expire_after_the_lifetime_with_4_4_7() {
    let (_dir, queue, id, t0) = queue_with_one().await;
    let late = UnixTime(t0.0 + 5 * 86_400);
    let after = queue
        .record_attempts(
            id,
            &[
                (0, AttemptOutcome::Transient(reply(451, "still greylisted"))),
                (1, AttemptOutcome::Transient(reply(421, "busy"))),
            ],
            late,
            &POLICY,
        )
        .unwrap();
    let AfterAttempts::Finished(entry) = after else {
        panic!("expected expiry, got {after:?}")
    };
    let RecipientState::Failed { last, .. } = &entry.states[0] else {
        panic!("{:?}", entry.states[0])
    };
    assert_eq!(last.reply.status, Some(EnhancedStatus(4, 4, 7)));
    assert_eq!(
        last.reply.text,
        "Message expired: not delivered in 5 days; last reply: 451 still greylisted"
    );
    // The next attempt of a pending recipient is never scheduled past the expiry.
    let (_dir, queue, id, t0) = queue_with_one().await;
    let near_end = UnixTime(t0.0 + 5 * 86_400 - 60);
    let after = queue
        .record_attempts(
            id,
            &[(0, AttemptOutcome::Transient(reply(451, "x")))],
            near_end,
            &POLICY,
        )
        .unwrap();
    assert!(
        matches!(after, AfterAttempts::Rescheduled { due, .. } if due == UnixTime(t0.0)),
        "recipient 1 was never tried and is still due at arrival: {after:?}"
    );
}

#[tokio::test]
async fn held_messages_are_never_due_until_released() {
    let (_dir, queue, id, t0) = queue_with_one().await;
    assert!(queue.hold(id).unwrap());
    assert!(queue.message(id).unwrap().unwrap().entry.held);
    assert!(queue
        .lease_due(UnixTime(t0.0 + 86_400), Duration::from_secs(600), 10)
        .unwrap()
        .is_empty());
    assert_eq!(
        queue.flush(None, t0).unwrap(),
        0,
        "flush leaves held messages alone"
    );
    // A deferral recorded while held does not put it back in the schedule.
    queue
        .record_attempts(
            id,
            &[(0, AttemptOutcome::Transient(reply(451, "x")))],
            t0,
            &POLICY,
        )
        .unwrap();
    assert!(queue.schedule().unwrap().is_empty());
    let later = UnixTime(t0.0 + 10);
    assert!(queue.release(id, later).unwrap());
    assert_eq!(
        queue
            .lease_due(later, Duration::from_secs(600), 10)
            .unwrap()
            .len(),
        1
    );
    assert!(!queue.hold(QueueId(42)).unwrap());
}

#[tokio::test]
async fn flush_makes_messages_due_now_and_delete_removes_them() {
    let (_dir, queue, id, t0) = queue_with_one().await;
    queue
        .record_attempts(
            id,
            &[
                (0, AttemptOutcome::Transient(reply(451, "x"))),
                (1, AttemptOutcome::Transient(reply(451, "x"))),
            ],
            t0,
            &POLICY,
        )
        .unwrap();
    assert!(queue
        .lease_due(UnixTime(t0.0 + 1), Duration::from_secs(600), 10)
        .unwrap()
        .is_empty());
    assert_eq!(queue.flush(Some(id), UnixTime(t0.0 + 1)).unwrap(), 1);
    let leased = queue
        .lease_due(UnixTime(t0.0 + 1), Duration::from_secs(600), 10)
        .unwrap();
    assert_eq!(leased.len(), 1);
    // The recipients are due too, or the agent would pass them over.
    for state in &leased[0].1.states {
        assert!(
            matches!(state, RecipientState::Pending { next_attempt, .. } if next_attempt.0 == t0.0 + 1),
            "{state:?}"
        );
    }
    assert!(queue.delete(id).unwrap());
    assert!(!queue.delete(id).unwrap());
    assert!(queue.list().unwrap().is_empty() && queue.schedule().unwrap().is_empty());
    // A report arriving after the delete changes nothing.
    let after = queue
        .record_attempts(
            id,
            &[(0, AttemptOutcome::Delivered(reply(250, "ok")))],
            t0,
            &POLICY,
        )
        .unwrap();
    assert_eq!(after, AfterAttempts::Gone);
}

#[tokio::test]
async fn a_report_is_queued_with_the_attempt_and_spares_the_quarantine() {
    let (_dir, queue, id, t0) = queue_with_one().await;
    let recipients = sample().recipients.len();
    let mut report = sample();
    report.sender = backstop_types::ReversePath::Null;
    let mut asked = Vec::new();
    let outcomes: Vec<(usize, AttemptOutcome)> = (0..recipients)
        .map(|i| (i, AttemptOutcome::Permanent(reply(550, "no such user"))))
        .collect();
    let after = queue
        .record_attempts_with(id, &outcomes, t0, &POLICY, None, &mut |entry, changes| {
            asked.push(changes.clone());
            Notices {
                reports: vec![(report.clone(), b"the report".to_vec())],
                reported: changes.failed.clone(),
                delay_notices: entry.delay_notices,
            }
        })
        .unwrap();
    assert!(matches!(after, AfterAttempts::Finished(_)));
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].failed, (0..recipients).collect::<Vec<_>>());
    // Every failure was reported: no quarantine. The report is queued, due at its arrival.
    assert!(queue.quarantine_show(id).unwrap().is_none());
    let queued = queue.list().unwrap();
    assert_eq!(queued.len(), 1);
    let (report_id, entry) = &queued[0];
    assert_ne!(*report_id, id);
    assert_eq!(entry.envelope.sender, backstop_types::ReversePath::Null);
    assert_eq!(
        queue.message(*report_id).unwrap().unwrap().body,
        b"the report"
    );
    assert_eq!(
        queue.schedule().unwrap(),
        vec![(report.arrival, *report_id)]
    );
}

#[tokio::test]
async fn concurrent_attempts_share_one_log_sync() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(queue.enqueue(&sample(), b"body".to_vec()).await.unwrap());
    }
    let t0 = sample().arrival;
    assert_eq!(
        queue
            .lease_due(t0, Duration::from_secs(600), 10)
            .unwrap()
            .len(),
        8
    );
    // A sync under way: the eight deliveries recorded meanwhile write, then wait for the disk.
    let syncing = queue.inner.wal.lock().unwrap();
    let threads: Vec<_> = ids
        .iter()
        .map(|&id| {
            let queue = queue.clone();
            std::thread::spawn(move || {
                let delivered = AttemptOutcome::Delivered(reply(250, "ok"));
                queue.record_attempts(id, &[(0, delivered.clone()), (1, delivered)], t0, &POLICY)
            })
        })
        .collect();
    // Their writes are in (visible, not yet synced) once the queue is empty.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !queue.list().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the deliveries were not recorded"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = syncing.syncs;
    drop(syncing);
    for t in threads {
        assert!(matches!(
            t.join().unwrap().unwrap(),
            AfterAttempts::Finished(_)
        ));
    }
    // The first to get the log syncs it for all eight; the others find their write covered.
    assert_eq!(queue.inner.wal.lock().unwrap().syncs - before, 1);
    drop(queue);
    let queue = Queue::open(dir.path()).unwrap();
    assert!(queue.list().unwrap().is_empty());
}

#[tokio::test]
async fn draining_a_large_queue_leaves_the_scan_few_tombstones() {
    use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let t0 = sample().arrival;
    let delivered = AttemptOutcome::Delivered(reply(250, "ok"));
    // 6,000 messages delivered 100 at a time, as the agent does: each leaves two deleted
    // schedule keys behind (its lease and its removal), 12,000 in all.
    for _ in 0..60 {
        for _ in 0..100 {
            queue.enqueue(&sample(), b"body".to_vec()).await.unwrap();
        }
        for (id, _) in queue.lease_due(t0, Duration::from_secs(600), 100).unwrap() {
            let outcomes = [(0, delivered.clone()), (1, delivered.clone())];
            queue.record_attempts(id, &outcomes, t0, &POLICY).unwrap();
        }
    }
    let id = queue.enqueue(&sample(), b"body".to_vec()).await.unwrap();
    set_perf_stats(PerfStatsLevel::EnableCount);
    let mut perf = PerfContext::default();
    perf.reset();
    let leased = queue.lease_due(t0, Duration::from_secs(600), 100).unwrap();
    let skipped = perf.metric(PerfMetric::InternalDeleteSkippedCount);
    set_perf_stats(PerfStatsLevel::Disable);
    assert_eq!(leased.iter().map(|m| m.0).collect::<Vec<_>>(), [id]);
    // Once 10,000 keys had been deleted (at the 51st pass) the past was compacted away: the
    // scan steps over the leases of the 900 messages since (6,000 without the compaction,
    // 12,000 if it also walked the deleted keys beyond `now`).
    assert!(
        skipped <= 1000,
        "the scan stepped over {skipped} deleted keys"
    );
}

#[tokio::test]
async fn a_sent_message_id_is_recorded_with_the_attempt() {
    let (_dir, queue, id, t0) = queue_with_one().await;
    let hash = crate::message_id_hash("<abc@example.test>");
    let delivered = AttemptOutcome::Delivered(reply(250, "ok"));
    queue
        .record_attempts_with(
            id,
            &[(0, delivered.clone()), (1, delivered)],
            t0,
            &POLICY,
            Some(hash),
            &mut |entry, _| Notices {
                delay_notices: entry.delay_notices,
                ..Notices::default()
            },
        )
        .unwrap();
    assert_eq!(queue.sent_message_id(hash).unwrap(), Some(t0));
}

#[tokio::test]
async fn quarantine_after_a_failure_holds_only_the_recipients_not_reached() {
    let (_dir, queue, id, t0) = queue_with_one().await;
    let outcomes = vec![
        (0, AttemptOutcome::Delivered(reply(250, "ok"))),
        (1, AttemptOutcome::Permanent(reply(550, "no such user"))),
    ];
    let after = queue
        .record_attempts_with(id, &outcomes, t0, &POLICY, None, &mut |entry, _| Notices {
            reports: Vec::new(),
            reported: Vec::new(),
            delay_notices: entry.delay_notices,
        })
        .unwrap();
    assert!(matches!(after, AfterAttempts::Finished(_)));
    let (record, body) = queue.quarantine_show(id).unwrap().unwrap();
    assert_eq!(body, b"body");
    let held: Vec<String> = record
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    assert_eq!(held, ["carol@local.test"], "bob has his copy already");
    assert!(
        record.reason.detail.contains("carol@local.test: 550"),
        "{}",
        record.reason
    );
    // Released, it goes to carol alone: bob never gets a second copy.
    assert!(queue.quarantine_release(id, None, t0).unwrap().is_some());
    let queued = queue.list().unwrap();
    assert_eq!(queued.len(), 1);
    let recipients: Vec<String> = queued[0]
        .1
        .envelope
        .recipients
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    assert_eq!(recipients, ["carol@local.test"]);
}
