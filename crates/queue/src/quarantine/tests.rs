use std::time::Duration;

use backstop_types::Recipient;

use super::*;
use crate::record::tests::sample;

fn hold(text: &str) -> Reason {
    Reason::hold(text)
}

#[tokio::test]
async fn quarantine_keeps_message_and_reason_until_released_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let id = queue
        .enqueue(&sample(), b"suspicious".to_vec())
        .await
        .unwrap();
    let t0 = sample().arrival;
    assert_eq!(
        queue.quarantine(id, &hold("looks odd"), t0).unwrap(),
        Hold::Held
    );
    assert!(queue.list().unwrap().is_empty(), "out of the queue");
    assert!(queue.schedule().unwrap().is_empty(), "never delivered");
    let listed = queue.quarantine_list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1.reason, hold("looks odd"));
    assert_eq!(listed[0].1.size, 10);
    assert!(listed[0].1.held.iter().all(|h| h.owner == Owner::Admin));
    let (record, body) = queue.quarantine_show(id).unwrap().unwrap();
    assert_eq!(record.envelope, sample());
    assert_eq!(body, b"suspicious");

    // Released: back in the queue under the same id, due now.
    let t1 = UnixTime(t0.0 + 60);
    let released = queue.quarantine_release(id, None, t1).unwrap().unwrap();
    assert_eq!(released.queue_id, id);
    assert_eq!(released.recipients.len(), sample().recipients.len());
    assert!(queue.quarantine_list().unwrap().is_empty());
    assert_eq!(queue.schedule().unwrap(), vec![(t1, id)]);
    assert_eq!(queue.message(id).unwrap().unwrap().body, b"suspicious");

    // Retention per kind: deleted once it has been there long enough, not before.
    assert_eq!(
        queue.quarantine(id, &hold("again"), t1).unwrap(),
        Hold::Held
    );
    let retention = |kind: ReasonKind| match kind {
        ReasonKind::Hold => Duration::from_secs(30 * 86_400),
        _ => Duration::from_secs(1),
    };
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
    assert!(queue.quarantine_release(id, None, t1).unwrap().is_none());
}

fn three_recipients() -> Envelope {
    let mut envelope = sample();
    let first = envelope.recipients[0].clone();
    envelope.recipients = ["a@example.org", "b@example.org", "c@elsewhere.example"]
        .into_iter()
        .map(|a| Recipient {
            address: backstop_types::Address::parse(a).unwrap(),
            ..first.clone()
        })
        .collect();
    envelope
}

#[tokio::test]
async fn a_release_to_one_recipient_queues_a_copy_for_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let reason = Reason::content("rspamd", "rspamd", "score 14");
    let owners = [Owner::Recipient, Owner::Recipient, Owner::Admin];
    let id = queue
        .quarantine_new(
            &three_recipients(),
            &b"spam?".to_vec().into(),
            &reason,
            &owners,
        )
        .unwrap();
    let t = UnixTime(1_800_000_000);
    let released = queue
        .quarantine_release(id, Some("B@example.org"), t)
        .unwrap()
        .unwrap();
    assert_ne!(released.queue_id, id, "others stay held: a new id");
    assert_eq!(released.recipients, ["b@example.org"]);
    let copy = queue.message(released.queue_id).unwrap().unwrap();
    assert_eq!(copy.entry.envelope.recipients.len(), 1);
    assert_eq!(
        copy.entry.envelope.arrival, t,
        "its lifetime counts from the release"
    );
    assert_eq!(copy.body, b"spam?");
    let record = queue.quarantine_record(id).unwrap().unwrap();
    assert_eq!(record.held[1].state, HeldState::Released(t));
    assert_eq!(record.held[0].state, HeldState::Held);
    assert_eq!(record.held[2].owner, Owner::Admin);

    // Released again: nothing left for that recipient.
    let again = queue
        .quarantine_release(id, Some("b@example.org"), t)
        .unwrap();
    assert_eq!(again.unwrap().recipients, Vec::<String>::new());

    // The owner of a's copy deletes it; c's stays; the last release takes the old id.
    assert!(!queue
        .quarantine_discard(id, "a@example.org", t, |r, i| r.held[i].owner
            == Owner::Admin)
        .unwrap());
    assert!(queue
        .quarantine_discard(id, "a@example.org", t, |_, _| true)
        .unwrap());
    assert!(!queue
        .quarantine_discard(id, "a@example.org", t, |_, _| true)
        .unwrap());
    // A release the check refuses releases nothing (c's copy is the administrator's).
    let refused = queue
        .quarantine_release_if(id, None, t, |r, i| r.held[i].owner == Owner::Recipient)
        .unwrap()
        .unwrap();
    assert!(refused.recipients.is_empty());
    let last = queue.quarantine_release(id, None, t).unwrap().unwrap();
    assert_eq!(last.queue_id, id);
    assert_eq!(last.recipients, ["c@elsewhere.example"]);
    assert!(queue.quarantine_record(id).unwrap().is_none());
    assert_eq!(queue.list().unwrap().len(), 2);
}

#[tokio::test]
async fn a_message_under_delivery_is_not_held() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let id = queue.enqueue(&sample(), b"x".to_vec()).await.unwrap();
    let now = sample().arrival;
    let leased = queue.lease_due(now, Duration::from_secs(600), 10).unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(
        queue.quarantine(id, &hold("now"), now).unwrap(),
        Hold::BeingDelivered
    );
    assert!(queue.message(id).unwrap().is_some(), "still queued");
    // Flushed (due now again, as after a lease lost in a crash): no attempt has it.
    queue.flush(Some(id), now).unwrap();
    assert_eq!(queue.quarantine(id, &hold("now"), now).unwrap(), Hold::Held);
    assert_eq!(
        queue.quarantine(id, &hold("again"), now).unwrap(),
        Hold::NotQueued
    );
}

#[tokio::test]
async fn pages_follow_the_cursor_and_filters_read_records_only() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let mut ids = Vec::new();
    for i in 0..25u64 {
        let mut envelope = three_recipients();
        envelope.sender = backstop_types::ReversePath::Address(
            backstop_types::Address::parse(&format!("sender{i}@example.net")).unwrap(),
        );
        envelope.arrival = UnixTime(1_800_000_000 + i);
        let reason = if i % 5 == 0 {
            Reason::dmarc("DMARC fail for example.net (p=quarantine)")
        } else {
            Reason::content("rule", "rule spam", "spam")
        };
        ids.push(
            queue
                .quarantine_new(&envelope, &b"x".to_vec().into(), &reason, &[])
                .unwrap(),
        );
    }
    let all = QuarantineQuery::default();
    let first = queue.quarantine_page(&all, None, 10).unwrap();
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.next, Some(ids[9]));
    let second = queue.quarantine_page(&all, first.next, 10).unwrap();
    assert_eq!(second.items[0].0, ids[10]);
    let third = queue.quarantine_page(&all, second.next, 10).unwrap();
    assert_eq!(third.items.len(), 5);
    assert_eq!(third.next, None);

    let dmarc = QuarantineQuery {
        kind: Some(ReasonKind::Dmarc),
        ..Default::default()
    };
    let found = queue.quarantine_page(&dmarc, None, 100).unwrap();
    assert_eq!(found.items.len(), 5);
    let by_sender = QuarantineQuery {
        sender: Some("SENDER7@".into()),
        ..Default::default()
    };
    assert_eq!(
        queue.quarantine_page(&by_sender, None, 100).unwrap().items[0].0,
        ids[7]
    );
    let dated = QuarantineQuery {
        since: Some(UnixTime(1_800_000_020)),
        until: Some(UnixTime(1_800_000_022)),
        recipient: Some("elsewhere".into()),
        ..Default::default()
    };
    let found = queue.quarantine_page(&dated, None, 100).unwrap();
    assert_eq!(
        found.items.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [ids[20], ids[21]]
    );

    let totals = queue.quarantine_totals().unwrap();
    let of = |k| totals.iter().find(|(kind, _)| *kind == k).unwrap().1;
    assert_eq!(of(ReasonKind::Dmarc).messages, 5);
    assert_eq!(of(ReasonKind::Content).messages, 20);
    assert_eq!(of(ReasonKind::Content).octets, 20);
}

#[tokio::test]
async fn a_spooled_body_released_to_one_recipient_is_linked_and_outlives_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    let incoming = queue.incoming_dir();
    std::fs::create_dir_all(&incoming).unwrap();
    let path = incoming.join("t1");
    std::fs::write(&path, vec![b'y'; 100_000]).unwrap();
    let body = Body::spooled(
        b"Subject: big\r\n\r\n".to_vec(),
        backstop_types::Spooled { path, len: 100_000 },
    );
    let id = queue
        .quarantine_new(&three_recipients(), &body, &hold("big"), &[])
        .unwrap();
    let t = UnixTime(1_800_000_000);
    let released = queue
        .quarantine_release(id, Some("a@example.org"), t)
        .unwrap()
        .unwrap();
    assert!(queue.quarantine_delete(id).unwrap());
    let copy = queue.message(released.queue_id).unwrap().unwrap();
    assert_eq!(copy.body.read_all().unwrap().len(), 100_000 + 16);
    drop(queue);
    // A restart's sweep keeps the released copy's file.
    let queue = Queue::open(dir.path()).unwrap();
    let copy = queue.message(released.queue_id).unwrap().unwrap();
    assert_eq!(copy.body.len(), 100_000 + 16);
    assert_eq!(queue.spool_files().unwrap().len(), 1);
}

#[tokio::test]
async fn the_allow_list_matches_addresses_and_domains() {
    let dir = tempfile::tempdir().unwrap();
    let queue = Queue::open(dir.path()).unwrap();
    queue
        .allow_sender("a@example.org", "News@List.example")
        .unwrap();
    queue
        .allow_sender("b@example.org", "@partner.example")
        .unwrap();
    assert!(queue
        .sender_allowed("A@example.org", "news@list.example")
        .unwrap());
    assert!(!queue
        .sender_allowed("b@example.org", "news@list.example")
        .unwrap());
    assert!(queue
        .sender_allowed("b@example.org", "x@partner.example")
        .unwrap());
    assert_eq!(queue.allow_list().unwrap().len(), 2);
    assert!(queue
        .disallow_sender("a@example.org", "news@list.example")
        .unwrap());
    assert!(!queue
        .sender_allowed("a@example.org", "news@list.example")
        .unwrap());
}
