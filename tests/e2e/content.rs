//! Content checks before the reply to DATA: a refusal goes to the client while it is still
//! connected, so the sending server reports it; a quarantine verdict keeps the message.

use crate::harness::{config, queue_id_in, queued, RawClient, Server};

fn send(server: &Server, message: &str) -> String {
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    c.command("MAIL FROM:<sender@example.org>");
    c.command("RCPT TO:<user@example.test>");
    c.command("DATA");
    c.send(format!("{message}.\r\n").as_bytes());
    let reply = c.reply();
    c.command("QUIT");
    reply
}

const GOOD: &str = "From: sender@example.org\r\nDate: Sun, 22 Nov 2026 17:00:00 +0000\r\nSubject: fine\r\n\r\nhello\r\n";
const NO_DATE: &str = "From: sender@example.org\r\nSubject: sloppy\r\n\r\nhello\r\n";

#[test]
fn malformed_messages_are_refused_before_the_reply_to_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &(config(d, "") + "\n[content]\nrfc5322 = \"reject\"\n"));
    let refused = send(&server, NO_DATE);
    assert_eq!(
        refused,
        "550 5.6.0 Message refused: no Date: header field (RFC 5322 3.6)\r\n"
    );
    assert!(send(&server, GOOD).starts_with("250 2.0.0 Ok: queued as "));
    let messages = queued(d);
    server.stop();
    assert_eq!(messages.len(), 1, "only the good message is queued");
}

#[test]
fn a_quarantine_verdict_keeps_the_message_out_of_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(
        d,
        &(config(d, "") + "\n[content]\nrfc5322 = \"quarantine\"\n"),
    );
    let reply = send(&server, NO_DATE);
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let id = queue_id_in(&reply);
    let in_queue = queued(d);
    let queue = backstop_queue::Queue::open_read_only(&d.join("var/queue")).unwrap();
    let (record, body) = queue.quarantine_show(id).unwrap().expect("in quarantine");
    drop(queue);
    server.stop();
    assert!(in_queue.is_empty(), "not in the queue: never delivered");
    assert_eq!(
        record.reason,
        "RFC 5322: no Date: header field (RFC 5322 3.6)"
    );
    assert!(String::from_utf8_lossy(&body).contains("Subject: sloppy"));
}
