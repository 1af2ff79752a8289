//! Local delivery: mail for a local domain ends up in the recipient's Maildir and leaves the
//! queue; mail for other domains waits in the queue with the reason.

use std::time::{Duration, Instant};

use crate::harness::{config, have, queued, RawClient, Server};

#[test]
fn local_mail_is_delivered_into_maildirs() {
    if !have("swaks", "local_mail_is_delivered_into_maildirs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = config(d, "").replace("[delivery]\npaused = true", "[delivery]\npaused = false");
    let server = Server::start(d, &config);

    let mut c = RawClient::connect(server.mx);
    let greeting = c.reply();
    assert!(
        greeting.starts_with("220 "),
        "{greeting:?}\n{}",
        server.log()
    );
    let ehlo = c.command("EHLO client.example");
    assert!(ehlo.starts_with("250"), "{ehlo:?}\n{}", server.log());
    assert_eq!(
        c.command("MAIL FROM:<sender@example.org>"),
        "250 2.1.0 Sender ok\r\n"
    );
    assert_eq!(
        c.command("RCPT TO:<User@example.test>"),
        "250 2.1.5 Recipient ok\r\n"
    );
    let data = c.command("DATA");
    assert!(data.starts_with("354"), "{data:?}\n{}", server.log());
    c.send(b"Subject: to the maildir\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued as "));
    c.command("QUIT");

    let new = d.join("var/maildir/example.test/user/new");
    let deadline = Instant::now() + Duration::from_secs(15);
    let file = loop {
        if let Some(Ok(entry)) = std::fs::read_dir(&new).ok().and_then(|mut r| r.next()) {
            break entry.path();
        }
        assert!(
            Instant::now() < deadline,
            "not delivered:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("Return-Path: <sender@example.org>\r\nDelivered-To: User@example.test\r\nReceived: from client.example"),
        "{text}"
    );
    assert!(
        text.ends_with("Subject: to the maildir\r\n\r\nhello\r\n"),
        "{text}"
    );
    // Delivered: out of the queue (give the agent a moment to record it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !queued(d).is_empty() {
        assert!(Instant::now() < deadline, "still queued after delivery");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A foreign recipient in a domain no route covers: it waits, with why.
    {
        let transcript =
            server.submit_as_alice("alice@example.test", "friend@elsewhere.example", &[]);
        assert!(
            transcript.contains("250 2.0.0 Ok: queued as "),
            "{transcript}"
        );
        let shown = server.after_first_attempt(crate::harness::queue_id_in(&transcript));
        assert!(
            shown.contains("451 4.4.0 no route to elsewhere.example"),
            "{shown}"
        );
        // mailq's habit: the reason under the message.
        let (ok, list) = server.cli(&["queue", "list"]);
        assert!(ok, "{list}");
        assert!(
            list.contains("\n                  (451 4.4.0 no route to elsewhere.example"),
            "{list}"
        );
        let (_, json) = server.cli(&["queue", "list", "--json"]);
        assert!(json.contains("\"format\": 1"), "{json}");
        assert!(
            json.contains("\"last_reply\": \"451 4.4.0 no route"),
            "{json}"
        );
    }
    // The log, greppable as Postfix's: the accept line with the Message-ID, one line per
    // delivery attempt with to=, from=, relay=, delay=, the reply with its code and status=.
    let log = server.log();
    let line = |parts: &[&str]| log.lines().any(|l| parts.iter().all(|p| l.contains(p)));
    assert!(
        line(&["accepted", "from=<alice@example.test>", "message_id=<"]),
        "{log}"
    );
    assert!(
        line(&[
            "to=User@example.test",
            "from=<sender@example.org>",
            "relay=local",
            "delay=",
            "reply=250 ",
            "status=sent"
        ]),
        "{log}"
    );
    assert!(
        line(&[
            "to=friend@elsewhere.example",
            "reply=451 4.4.0 no route to elsewhere.example",
            "status=deferred"
        ]),
        "{log}"
    );
    server.stop();
}
