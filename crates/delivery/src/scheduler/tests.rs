//! The scheduler against scripted next hops on loopback: a slow destination holds up only
//! itself, and a destination whose connections fail is marked down, not tried for each of its
//! messages, and used again once it answers.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use backstop_smtp_client::{Settings, TlsPolicy};
use backstop_types::{Domain, UnixTime};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::*;
use crate::agent::tests::{agent, envelope};
use crate::agent::{Route, Via};

/// How a scripted next hop behaves.
#[derive(Default)]
struct Peer {
    /// Connections accepted.
    connections: AtomicUsize,
    /// Messages taken.
    messages: AtomicUsize,
    /// Answer every connection with 421 and hang up.
    refuse: AtomicBool,
    /// Hold the reply to the end of each message until this is notified.
    hold: Option<Notify>,
}

/// A next hop on loopback behaving as `peer` says; its address.
async fn start(peer: Arc<Peer>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            peer.connections.fetch_add(1, Ordering::SeqCst);
            let peer = Arc::clone(&peer);
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                if peer.refuse.load(Ordering::SeqCst) {
                    let _ = write.write_all(b"421 4.3.2 busy\r\n").await;
                    return;
                }
                let _ = write.write_all(b"220 peer.test\r\n").await;
                let mut lines = BufReader::new(read);
                let mut data = false;
                loop {
                    let mut line = String::new();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let reply: &[u8] = if data {
                        if line != ".\r\n" {
                            continue;
                        }
                        data = false;
                        if let Some(hold) = &peer.hold {
                            hold.notified().await;
                        }
                        peer.messages.fetch_add(1, Ordering::SeqCst);
                        b"250 2.0.0 taken\r\n"
                    } else if line.starts_with("EHLO") {
                        b"250-peer.test\r\n250 PIPELINING\r\n"
                    } else if line.starts_with("DATA") {
                        data = true;
                        b"354 go\r\n"
                    } else if line.starts_with("QUIT") {
                        let _ = write.write_all(b"221 bye\r\n").await;
                        return;
                    } else {
                        b"250 2.0.0 ok\r\n"
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

fn relay(domain: &str, address: std::net::SocketAddr) -> Route {
    Route {
        domains: vec![Domain::parse(domain).unwrap()],
        any_domain: false,
        via: Via::Relay(NextHop {
            endpoint: Endpoint::from(address),
            host: "peer.test".into(),
        }),
        client: Settings {
            helo: "mx.test".into(),
            lmtp: false,
            tls: TlsPolicy::Off,
            connect_timeout: Duration::from_secs(5),
            timeouts: backstop_smtp_client::Timeouts::RFC5321,
            auth: None,
        },
    }
}

/// Waits (at most 30 s) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "never: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_destination_holds_up_only_its_own_mail() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent(dir.path());
    let slow = Arc::new(Peer {
        hold: Some(Notify::new()),
        ..Peer::default()
    });
    let fast = Arc::new(Peer::default());
    agent.routes.routes = vec![
        relay("slow.example", start(Arc::clone(&slow)).await),
        relay("fast.example", start(Arc::clone(&fast)).await),
    ];
    let t0 = UnixTime(1_800_000_000);
    agent
        .queue
        .enqueue(
            &envelope(&["a@slow.example"], t0),
            b"Subject: slow\r\n\r\nx\r\n".to_vec(),
        )
        .await
        .unwrap();
    for n in 0..20 {
        let body = format!("Subject: fast {n}\r\n\r\nx\r\n").into_bytes();
        agent
            .queue
            .enqueue(&envelope(&["b@fast.example"], t0), body)
            .await
            .unwrap();
    }
    let scheduler = Scheduler::new(agent.limits, backstop_types::clock::system());
    let drained = {
        let (scheduler, agent) = (Arc::clone(&scheduler), agent.clone());
        tokio::spawn(async move { scheduler.drain(&agent, t0).await })
    };
    // Every fast message arrives while the slow one's end of data is still unanswered (the
    // slow peer answers only when told to, after this).
    eventually("the fast destination got all 20", || {
        fast.messages.load(Ordering::SeqCst) == 20
    })
    .await;
    assert_eq!(slow.messages.load(Ordering::SeqCst), 0);
    slow.hold.as_ref().unwrap().notify_one();
    let report = drained.await.unwrap();
    assert_eq!((report.messages, report.delivered), (21, 21));
    assert_eq!(slow.messages.load(Ordering::SeqCst), 1);
    assert!(agent.queue.list().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_destination_is_not_tried_for_each_message_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent(dir.path());
    agent.limits.initial_window = 1;
    agent.limits.dead_after = 2;
    agent.limits.dead_backoff = Duration::from_millis(500);
    let peer = Arc::new(Peer::default());
    peer.refuse.store(true, Ordering::SeqCst);
    agent.routes.routes = vec![relay("dead.example", start(Arc::clone(&peer)).await)];
    let t0 = UnixTime(1_800_000_000);
    for _ in 0..10 {
        agent
            .queue
            .enqueue(
                &envelope(&["c@dead.example"], t0),
                b"Subject: x\r\n\r\nx\r\n".to_vec(),
            )
            .await
            .unwrap();
    }
    let scheduler = Scheduler::new(agent.limits, backstop_types::clock::system());
    let report = scheduler.drain(&agent, t0).await;
    assert_eq!((report.messages, report.deferred), (10, 10));
    // Two failed connections mark it down; the other eight are deferred without one.
    assert_eq!(peer.connections.load(Ordering::SeqCst), 2);
    assert_eq!(
        agent
            .reports
            .counters
            .destinations_down
            .load(Ordering::Relaxed),
        1
    );
    let deferred = agent.queue.list().unwrap();
    let reasons: Vec<String> = deferred
        .iter()
        .filter_map(|(_, e)| match &e.states[0] {
            RecipientState::Pending { last: Some(a), .. } => Some(a.reply.text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons.iter().filter(|r| r.contains("is down")).count(),
        8,
        "{reasons:?}"
    );

    // It answers again. Once the down period is over, one probe goes through, and then all.
    peer.refuse.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = UnixTime(t0.0 + 1000);
    agent.queue.flush(None, later).unwrap();
    let report = scheduler.drain(&agent, later).await;
    assert_eq!(report.delivered, 10, "{report:?}");
    assert_eq!(peer.messages.load(Ordering::SeqCst), 10);
    assert_eq!(
        agent
            .reports
            .counters
            .destinations_down
            .load(Ordering::Relaxed),
        0
    );
    assert!(agent.queue.list().unwrap().is_empty());
}

/// With every connection in use, an idle connection of one destination is given up at once
/// for another destination's waiting mail: it does not hold the connection for its idle time.
/// Here that time is an hour and there is one connection in all: whichever destination gets
/// it first, the other's message would wait the hour without the hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_gives_way_to_another_destinations_mail() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent(dir.path());
    agent.limits.connections = 1;
    agent.limits.idle = Duration::from_secs(3600);
    let first = Arc::new(Peer::default());
    let second = Arc::new(Peer::default());
    agent.routes.routes = vec![
        relay("first.example", start(Arc::clone(&first)).await),
        relay("second.example", start(Arc::clone(&second)).await),
    ];
    let t0 = UnixTime(1_800_000_000);
    for to in ["a@first.example", "b@second.example"] {
        agent
            .queue
            .enqueue(&envelope(&[to], t0), b"Subject: x\r\n\r\nx\r\n".to_vec())
            .await
            .unwrap();
    }
    let scheduler = Scheduler::new(agent.limits, backstop_types::clock::system());
    let drained = {
        let (scheduler, agent) = (Arc::clone(&scheduler), agent.clone());
        tokio::spawn(async move { scheduler.drain(&agent, t0).await })
    };
    eventually("both destinations got their message", || {
        first.messages.load(Ordering::SeqCst) == 1 && second.messages.load(Ordering::SeqCst) == 1
    })
    .await;
    let report = drained.await.unwrap();
    assert_eq!((report.messages, report.delivered), (2, 2));
}

/// A delivery covers its message in the memory budget before reading it: while the budget is
/// used up (by receiving sessions, say) it waits, and goes on once there is room; its share
/// comes back when it is done. A message bigger than the whole budget, or of unknown size,
/// does not wait for ever.
#[tokio::test]
async fn a_delivery_waits_for_memory_before_reading_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut agent = agent(dir.path());
    let budget = backstop_types::budget::MemoryBudget::new(100_000);
    agent.memory = Arc::clone(&budget);
    let agent = Arc::new(agent);
    let job = |size| Job {
        id: QueueId(1),
        now: UnixTime(1_800_000_000),
        agent: Arc::clone(&agent),
        route: None,
        recipients: vec![0],
        size,
    };
    let mut sessions = Reservation::new(&budget);
    assert!(sessions.cover(60_000));
    let waiting = tokio::spawn({
        let job = job(50_000);
        async move {
            let share = memory_for(&job, job.size).await;
            share.held()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "went on without room");
    drop(sessions);
    assert_eq!(waiting.await.unwrap(), 50_000);
    assert_eq!(budget.used(), 0, "the share came back");
    // Bigger than the budget, or not known: no share, no wait.
    assert_eq!(memory_for(&job(200_000), 200_000).await.held(), 0);
    assert_eq!(memory_for(&job(0), 0).await.held(), 0);
}
