//! Connection limits, seen from the client.

use crate::harness::{config, RawClient, Server};

#[test]
fn connections_over_the_per_ip_limit_get_421() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &config(dir.path(), "max_connections_per_ip = 2"),
    );
    let mut first = RawClient::connect(server.mx);
    let mut second = RawClient::connect(server.mx);
    assert!(first.reply().starts_with("220 "));
    assert!(second.reply().starts_with("220 "));
    let mut third = RawClient::connect(server.mx);
    let reply = third.reply();
    assert!(
        reply.starts_with("421 4.7.0 Too many connections from your address"),
        "{reply:?}"
    );
    drop(first);
    // The freed place is usable again once the server has seen the close.
    let mut admitted = false;
    for _ in 0..50 {
        let mut again = RawClient::connect(server.mx);
        if again.reply().starts_with("220 ") {
            admitted = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(admitted);
    server.stop();
}

#[test]
fn early_talkers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), "greeting_delay = \"1s\""));
    let mut hasty = RawClient::connect(server.mx);
    hasty.send(b"EHLO hasty.example\r\n");
    let reply = hasty.reply();
    assert!(
        reply.starts_with(
            "554 5.5.0 Protocol synchronization error: input sent before the greeting"
        ),
        "{reply:?}"
    );
    assert_eq!(hasty.reply(), "", "the connection must be closed");
    // A patient client gets the greeting after the delay.
    let mut patient = RawClient::connect(server.mx);
    assert!(patient.reply().starts_with("220 mx.backstop.test ESMTP"));
    server.stop();
}

/// Messages arriving at once share `max_message_memory`: with room for about three 900 KB
/// messages (held in memory: below the spool threshold), the four sent side by side cannot
/// all be held. Those that do not fit are read to
/// their end and deferred (452 4.3.1), the others are queued whole, nothing half-stored; the
/// memory comes back once they are stored, and a deferred message goes through on its retry.
#[test]
fn messages_beyond_the_memory_budget_are_deferred_whole() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &config(
            dir.path(),
            // Held in memory, not spooled: the budget is what is tested here.
            "max_message_size = \"1M\"\nmax_message_memory = \"3M\"\nspool_threshold = \"2M\"",
        ),
    );
    let line = format!("{}\r\n", "x".repeat(898));
    let chunk = line.repeat(64);
    let mut clients: Vec<RawClient> = (0..4)
        .map(|_| {
            let mut c = server.ready_for_rcpt();
            assert!(c.command("RCPT TO:<bob@example.test>").starts_with("250"));
            assert!(c.command("DATA").starts_with("354"));
            c.send(b"Subject: big\r\n\r\n");
            c
        })
        .collect();
    // About 900 KB each, a piece of each in turn, so that all four are under way at once.
    for _ in 0..15 {
        for c in &mut clients {
            c.send(chunk.as_bytes());
        }
    }
    let replies: Vec<String> = clients
        .iter_mut()
        .map(|c| {
            c.send(b".\r\n");
            c.reply()
        })
        .collect();
    let queued = replies.iter().filter(|r| r.starts_with("250")).count();
    let deferred = replies
        .iter()
        .filter(|r| {
            r.starts_with(
                "452 4.3.1 Insufficient system memory for messages in progress, try again later",
            )
        })
        .count();
    assert!(queued >= 2 && deferred >= 1, "{replies:?}");
    assert_eq!(queued + deferred, 4, "{replies:?}");
    // What got 250 is in the queue, whole; nothing else is.
    let stored = crate::harness::queued(dir.path());
    assert_eq!(stored.len(), queued);
    for (_, _, body) in &stored {
        assert!(body.ends_with(chunk.as_bytes()), "a message cut short");
        assert!(body.len() > 15 * chunk.len(), "{}", body.len());
    }
    // The memory is back: the metric says so, and the deferred client's retry is queued.
    let (ok, metrics) = server.cli(&["metrics"]);
    assert!(ok, "{metrics}");
    assert!(metrics.contains("smtp_message_memory_bytes 0"), "{metrics}");
    assert!(
        metrics.contains("smtp_message_memory_limit_bytes 3145728"),
        "{metrics}"
    );
    let retry = replies.iter().position(|r| r.starts_with("452")).unwrap();
    let c = &mut clients[retry];
    assert!(c
        .command("MAIL FROM:<someone@example.org>")
        .starts_with("250"));
    assert!(c.command("RCPT TO:<bob@example.test>").starts_with("250"));
    assert!(c.command("DATA").starts_with("354"));
    c.send(b"Subject: again\r\n\r\n");
    for _ in 0..15 {
        c.send(chunk.as_bytes());
    }
    c.send(b".\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("250"), "{reply}");
    server.stop();
}
