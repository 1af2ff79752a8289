use std::time::Duration;

use super::*;
use crate::record::tests::sample;

#[tokio::test]
async fn quarantine_keeps_message_and_reason_until_released_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let id = queue
        .enqueue(&sample(), b"suspicious".to_vec())
        .await
        .unwrap();
    let t0 = sample().arrival;
    assert!(queue
        .quarantine(id, "delivery failed for an unverifiable sender", t0)
        .unwrap());
    assert!(queue.list().unwrap().is_empty(), "out of the queue");
    assert!(queue.schedule().unwrap().is_empty(), "never delivered");
    let listed = queue.quarantine_list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].1.reason,
        "delivery failed for an unverifiable sender"
    );
    let (record, body) = queue.quarantine_show(id).unwrap().unwrap();
    assert_eq!(record.envelope, sample());
    assert_eq!(body, b"suspicious");

    // Released: back in the queue under the same id, due now.
    let t1 = UnixTime(t0.0 + 60);
    assert!(queue.quarantine_release(id, t1).unwrap());
    assert!(queue.quarantine_list().unwrap().is_empty());
    assert_eq!(queue.schedule().unwrap(), vec![(t1, id)]);
    assert_eq!(queue.message(id).unwrap().unwrap().body, b"suspicious");

    // Retention: deleted once it has been there long enough, not before.
    assert!(queue.quarantine(id, "again", t1).unwrap());
    let retention = Duration::from_secs(30 * 86_400);
    assert_eq!(
        queue
            .expire_quarantine(UnixTime(t1.0 + 30 * 86_400 - 1), retention)
            .unwrap(),
        0
    );
    assert_eq!(
        queue
            .expire_quarantine(UnixTime(t1.0 + 30 * 86_400), retention)
            .unwrap(),
        1
    );
    assert!(queue.quarantine_show(id).unwrap().is_none());
    assert!(!queue.quarantine_delete(id).unwrap());
}

#[tokio::test]
async fn a_quarantine_verdict_stores_straight_into_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue
        .enqueue_quarantined(
            QueueId(7),
            &sample(),
            &b"spam".to_vec().into(),
            "rspamd: quarantine",
        )
        .unwrap();
    assert!(queue.list().unwrap().is_empty());
    assert_eq!(queue.quarantine_list().unwrap()[0].0, QueueId(7));
    assert!(queue.quarantine_delete(QueueId(7)).unwrap());
    let id = queue
        .quarantine_new(&sample(), &b"ham?".to_vec().into(), "rfc5322")
        .unwrap();
    assert_eq!(queue.quarantine_show(id).unwrap().unwrap().1, b"ham?");
    assert!(queue.list().unwrap().is_empty());
}
