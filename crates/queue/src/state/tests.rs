use super::*;

#[test]
fn sent_ids_and_expiring_state() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let hash = [7u8; 16];
    assert_eq!(queue.sent_message_id(hash).unwrap(), None);
    assert!(queue.sent_message_ids_empty().unwrap());
    queue.record_sent_message_id(hash, UnixTime(100)).unwrap();
    assert!(!queue.sent_message_ids_empty().unwrap());
    assert_eq!(queue.sent_message_id(hash).unwrap(), Some(UnixTime(100)));

    queue
        .state_put(b"grey:1.2.3.4", b"seen", UnixTime(200))
        .unwrap();
    assert_eq!(
        queue.state_get(b"grey:1.2.3.4", UnixTime(199)).unwrap(),
        Some(b"seen".to_vec())
    );
    assert_eq!(
        queue.state_get(b"grey:1.2.3.4", UnixTime(200)).unwrap(),
        None
    );
    assert_eq!(queue.state_get(b"nothing", UnixTime(0)).unwrap(), None);
}

#[test]
fn expired_state_and_old_sent_ids_leave_the_files() {
    use crate::store::{CF_SENT_IDS, CF_STATE};
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let day = 86_400;
    // A month of greylisting: 1,000 triplets that expire after a day, 10 that last longer.
    for n in 0..1_000u32 {
        let key = format!("grey:{n}");
        queue
            .state_put(key.as_bytes(), b"seen", UnixTime(day))
            .unwrap();
    }
    for n in 0..10u32 {
        let key = format!("pass:{n}");
        queue
            .state_put(key.as_bytes(), b"ok", UnixTime(40 * day))
            .unwrap();
    }
    // Sent on day 0 and on day 20.
    for n in 0..500u32 {
        let at = if n < 490 { 0 } else { 20 * day };
        let hash = message_id_hash(&format!("<{n}@example.test>"));
        queue.record_sent_message_id(hash, UnixTime(at)).unwrap();
    }
    assert_eq!(queue.stored_entries(CF_STATE), 1_010);
    assert_eq!(queue.stored_entries(CF_SENT_IDS), 500);

    // Nothing has expired yet.
    let retention = std::time::Duration::from_secs(30 * day);
    let none = queue.expire_state(UnixTime(day - 1), retention).unwrap();
    assert_eq!(none, Expired::default());

    // Day 31: the triplets are past their time, the day-0 Message-IDs past the retention.
    let expired = queue.expire_state(UnixTime(31 * day), retention).unwrap();
    assert_eq!(
        expired,
        Expired {
            state: 1_000,
            sent: 490
        }
    );
    // Gone from the files, tombstones too; what is left still answers.
    assert_eq!(queue.stored_entries(CF_STATE), 10);
    assert_eq!(queue.stored_entries(CF_SENT_IDS), 10);
    assert_eq!(queue.state_get(b"grey:7", UnixTime(0)).unwrap(), None);
    assert_eq!(
        queue.state_get(b"pass:7", UnixTime(31 * day)).unwrap(),
        Some(b"ok".to_vec())
    );
    let young = message_id_hash("<495@example.test>");
    assert_eq!(
        queue.sent_message_id(young).unwrap(),
        Some(UnixTime(20 * day))
    );
    let old = message_id_hash("<5@example.test>");
    assert_eq!(queue.sent_message_id(old).unwrap(), None);
}

#[test]
fn message_id_hashes_ignore_brackets_and_space() {
    assert_eq!(
        message_id_hash("<abc@example.test>"),
        message_id_hash(" abc@example.test ")
    );
    assert_ne!(
        message_id_hash("abc@example.test"),
        message_id_hash("abd@example.test")
    );
}
