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
    // The refusal's log line names the message's recipient, as a refusal at RCPT does.
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains(" refused stage=\"data\"")
            && l.contains(
                "from=<sender@example.org> to=user@example.test recipients=1 reply=550 5.6.0"
            )),
        "{log}"
    );
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
        record.reason.to_string(),
        "rfc5322: no Date: header field (RFC 5322 3.6)"
    );
    assert!(String::from_utf8_lossy(body.head()).contains("Subject: sloppy"));
}

/// A message from sender@example.org with this subject and MIME body (after the headers).
fn mime(subject: &str, content_type: &str, body: &str) -> String {
    format!(
        "From: sender@example.org\r\nDate: Sun, 22 Nov 2026 17:00:00 +0000\r\nSubject: {subject}\r\n\
         MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n\r\n{body}"
    )
}

#[test]
fn content_rules_reject_quarantine_and_discard_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rules = r#"
[[filter]]
type = "header"
header = "Subject"
pattern = "(?i)\\bviagra\\b"
action = "reject"
message = "Spam is not welcome"

[[filter]]
type = "header"
pattern = "^X-Certainly-Junk: yes$"
action = "discard"
certain = true

[[filter]]
type = "body"
pattern = "(?i)wire the money"
action = "quarantine"

[[filter]]
type = "attachment"
extensions = ["exe", "scr"]
mime_types = ["application/x-dosexec"]
action = "reject"
message = "Executable attachments are not accepted"

[[filter]]
type = "mime_depth"
max = 4
action = "reject"
"#;
    let server = Server::start(d, &(config(d, "") + rules));
    // The subject, RFC 2047-encoded: decoded before it is matched.
    let reply = send(
        &server,
        &mime("=?UTF-8?B?Y2hlYXAgVmlhZ3Jh?=", "text/plain", "hi\r\n"),
    );
    assert_eq!(reply, "550 5.7.1 Spam is not welcome\r\n");
    // A Windows program called invoice.pdf.
    let reply = send(
        &server,
        &mime(
            "invoice",
            "multipart/mixed; boundary=\"b\"",
            "--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
             --b\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAA\r\n--b--\r\n",
        ),
    );
    assert_eq!(
        reply,
        "550 5.7.1 Executable attachments are not accepted\r\n"
    );
    // Five levels of multipart.
    let mut deep = "--l0\r\nContent-Type: text/plain\r\n\r\nbottom\r\n--l0--\r\n".to_owned();
    for level in 1..5 {
        deep = format!(
            "--l{level}\r\nContent-Type: multipart/mixed; boundary=\"l{}\"\r\n\r\n{deep}--l{level}--\r\n",
            level - 1
        );
    }
    let reply = send(
        &server,
        &mime("deep", "multipart/mixed; boundary=\"l4\"", &deep),
    );
    assert_eq!(reply, "550 5.7.1 Message content rejected\r\n");
    // Quoted-printable, decoded before it is matched: quarantined.
    let reply = send(
        &server,
        &mime(
            "urgent",
            "text/plain\r\nContent-Transfer-Encoding: quoted-printable",
            "Please wire the=\r\n money today\r\n",
        ),
    );
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let reason = server.quarantined(queue_id_in(&reply));
    assert_eq!(reason, "body rule: body matches (?i)wire the money");
    // Discarded: the client hears 250, nothing is kept, the log says so.
    let reply = send(&server, &format!("X-Certainly-Junk: yes\r\n{GOOD}"));
    assert_eq!(reply, "250 2.0.0 Ok\r\n");
    assert!(send(&server, GOOD).starts_with("250 2.0.0 Ok: queued as "));
    let log = server.log();
    assert!(
        log.contains("message discarded") && log.contains("header X-Certainly-Junk matches"),
        "{log}"
    );
    let (_, metrics) = server.cli(&["metrics"]);
    let line = "smtp_rejections_total{stage=\"data\",check=\"rule\",code=\"5.7.1\"} 3\n";
    assert!(metrics.contains(line), "{metrics}");
    let messages = queued(d);
    server.stop();
    assert_eq!(messages.len(), 1, "only the good message is queued");
}
