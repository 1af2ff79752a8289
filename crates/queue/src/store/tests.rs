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
    assert_eq!(stored.envelope, sample());
    assert_eq!(stored.body, b"Subject: x\r\n\r\nbody\r\n");
    assert_eq!(queue.list().unwrap().len(), 1);
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
