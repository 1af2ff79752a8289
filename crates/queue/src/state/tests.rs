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
