use super::*;
use crate::record::tests::sample;

#[tokio::test]
async fn an_accepted_message_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let queue = Queue::open(dir.path()).unwrap();
        queue
            .enqueue(&sample(), b"Subject: x\r\n\r\nbody\r\n".to_vec())
            .await
            .unwrap()
    };
    let queue = Queue::open(dir.path()).unwrap();
    let stored = queue.message(id).unwrap().unwrap();
    assert_eq!(stored.entry, Entry::new(sample(), 20));
    assert_eq!(stored.body, b"Subject: x\r\n\r\nbody\r\n");
    assert_eq!(queue.list().unwrap().len(), 1);
    assert_eq!(queue.schedule().unwrap(), vec![(sample().arrival, id)]);
    let read_only = Queue::open_read_only(dir.path()).unwrap();
    assert_eq!(read_only.list().unwrap()[0].0, id);
}

#[tokio::test]
async fn concurrent_accepts_get_distinct_increasing_ids() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            queue
                .enqueue(&sample(), format!("message {i}").into_bytes())
                .await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap().unwrap());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 50);
    let listed: Vec<QueueId> = queue
        .list()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, ids);
    drop(queue);
    // After a restart, new ids stay above the old ones.
    let queue = Queue::open(dir.path()).unwrap();
    let next = queue.enqueue(&sample(), b"later".to_vec()).await.unwrap();
    assert!(next > *ids.last().unwrap());
}

#[tokio::test]
async fn a_damaged_record_is_moved_aside_and_the_rest_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let good = queue.enqueue(&sample(), b"good".to_vec()).await.unwrap();
    let bad = queue.enqueue(&sample(), b"bad".to_vec()).await.unwrap();
    // Damage one entry on disk, as a bit flip or a bug in an old version might.
    queue
        .inner
        .db
        .put_cf(queue.cf(CF_ENTRIES), bad.to_be_bytes(), [2u8, 0, 0])
        .unwrap();
    let listed: Vec<QueueId> = queue
        .list()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, vec![good]);
    assert!(queue.message(bad).unwrap().is_none());
    let damaged = queue.damaged().unwrap();
    let keys: Vec<&str> = damaged.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            format!("entry:{bad}"),
            format!("entry:{bad}:body"),
            format!("entry:{bad}:raw")
        ]
    );
    assert_eq!(damaged[0].1, "record truncated");
    // Out of the schedule too: it is never leased.
    assert_eq!(queue.schedule().unwrap(), vec![(sample().arrival, good)]);
}
