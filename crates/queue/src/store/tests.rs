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

/// A message the listener wrote into `incoming/` as it arrived: `head` in memory, `rest` in
/// a file.
fn arriving(queue: &Queue, name: &str, head: &[u8], rest: &[u8]) -> Body {
    let path = queue.incoming_dir().join(name);
    std::fs::write(&path, rest).unwrap();
    Body::spooled(
        head.to_vec(),
        backstop_types::Spooled {
            path,
            len: rest.len() as u64,
        },
    )
}

/// A spooled message is accepted by moving its file into place under its queue id; it reads
/// back whole after a restart, and goes with the message.
#[tokio::test]
async fn a_spooled_message_is_stored_in_its_file_and_removed_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let rest = b"line\r\n".repeat(10_000);
    let id = {
        let queue = Queue::open(dir.path()).unwrap();
        let body = arriving(&queue, "1-1", b"Subject: big\r\n\r\n", &rest);
        let id = queue.enqueue(&sample(), body).await.unwrap();
        assert_eq!(
            queue.spool_files().unwrap(),
            vec![dir.path().join("spool").join(id.to_string())],
            "moved out of incoming/ under its id"
        );
        id
    };
    let queue = Queue::open(dir.path()).unwrap();
    let stored = queue.message(id).unwrap().unwrap();
    assert_eq!(stored.entry.size, 16 + rest.len() as u64);
    assert_eq!(stored.body.head(), b"Subject: big\r\n\r\n");
    let mut whole = b"Subject: big\r\n\r\n".to_vec();
    whole.extend_from_slice(&rest);
    assert_eq!(stored.body.read_all().unwrap(), whole);
    let read_only = Queue::open_read_only(dir.path()).unwrap();
    assert_eq!(
        read_only
            .message(id)
            .unwrap()
            .unwrap()
            .body
            .read_all()
            .unwrap(),
        whole
    );
    assert!(queue.delete(id).unwrap());
    assert!(queue.spool_files().unwrap().is_empty());
}

/// What a crash leaves is gone after the next start: files of messages still arriving, and a
/// file moved into place whose record was never written. A file a record names stays.
#[tokio::test]
async fn the_spool_is_swept_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let kept = {
        let queue = Queue::open(dir.path()).unwrap();
        let body = arriving(&queue, "1-1", b"Subject: kept\r\n\r\n", b"x\r\n");
        let kept = queue.enqueue(&sample(), body).await.unwrap();
        arriving(&queue, "2-1", b"", b"half a message");
        std::fs::write(dir.path().join("spool").join("00000000000000FF"), b"orphan").unwrap();
        std::fs::write(dir.path().join("spool").join("stray"), b"not ours").unwrap();
        assert_eq!(queue.spool_files().unwrap().len(), 4);
        kept
    };
    let queue = Queue::open(dir.path()).unwrap();
    assert_eq!(
        queue.spool_files().unwrap(),
        vec![dir.path().join("spool").join(kept.to_string())]
    );
    assert_eq!(
        queue
            .message(kept)
            .unwrap()
            .unwrap()
            .body
            .read_all()
            .unwrap(),
        b"Subject: kept\r\n\r\nx\r\n"
    );
    // A read-only opening (the CLI beside a running server) never sweeps.
    let arriving_now = queue.incoming_dir().join("3-1");
    std::fs::write(&arriving_now, b"still arriving").unwrap();
    drop(Queue::open_read_only(dir.path()).unwrap());
    assert!(arriving_now.exists());
}

/// A spooled message keeps its file through quarantine and release, and loses it when it is
/// deleted from quarantine; one quarantined in-session moves its file in the same way.
#[tokio::test]
async fn a_spooled_message_keeps_its_file_in_quarantine() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let now = sample().arrival;
    let body = arriving(&queue, "1-1", b"Subject: q\r\n\r\n", b"rest\r\n");
    let id = queue.enqueue(&sample(), body).await.unwrap();
    assert_eq!(
        queue
            .quarantine(id, &backstop_types::quarantine::Reason::hold("held"), now)
            .unwrap(),
        crate::Hold::Held
    );
    let (_, body) = queue.quarantine_show(id).unwrap().unwrap();
    assert_eq!(body.read_all().unwrap(), b"Subject: q\r\n\r\nrest\r\n");
    assert!(queue.quarantine_release(id, None, now).unwrap().is_some());
    let body = queue.message(id).unwrap().unwrap().body;
    assert_eq!(body.read_all().unwrap(), b"Subject: q\r\n\r\nrest\r\n");
    assert_eq!(
        queue
            .quarantine(id, &backstop_types::quarantine::Reason::hold("again"), now)
            .unwrap(),
        crate::Hold::Held
    );
    assert_eq!(queue.spool_files().unwrap().len(), 1);
    assert!(queue.quarantine_delete(id).unwrap());
    assert!(queue.spool_files().unwrap().is_empty());

    let body = arriving(&queue, "1-2", b"Subject: v\r\n\r\n", b"virus\r\n");
    let id = queue
        .quarantine_new(
            &sample(),
            &body,
            &backstop_types::quarantine::Reason::content("clamd", "clamd", "Eicar"),
            &[],
        )
        .unwrap();
    let (_, body) = queue.quarantine_show(id).unwrap().unwrap();
    assert_eq!(body.read_all().unwrap(), b"Subject: v\r\n\r\nvirus\r\n");
    drop(queue);
    // Kept across a start: a quarantined file is named by its record.
    let queue = Queue::open(dir.path()).unwrap();
    assert_eq!(queue.spool_files().unwrap().len(), 1);
}

/// A spool file shorter than the message the session received (a disk that lost writes) is
/// not accepted: nothing is stored and the client is told to try later.
#[tokio::test]
async fn a_short_spool_file_is_not_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut body = arriving(&queue, "1-1", b"Subject: s\r\n\r\n", b"0123456789");
    let (head, tail) = body.into_parts();
    let mut tail = tail.unwrap();
    tail.len = 20;
    body = Body::spooled(head, tail);
    assert!(matches!(
        queue.enqueue(&sample(), body).await,
        Err(QueueError::Spool(..))
    ));
    assert!(queue.list().unwrap().is_empty());
}
