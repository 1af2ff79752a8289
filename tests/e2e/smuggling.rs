//! SMTP smuggling: no end-of-data trick queues a second message; each gets a 5xx.

use crate::harness::{config, queued, RawClient, Server};

#[test]
fn no_smuggling_sequence_queues_a_second_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let sequences: [&[u8]; 6] = [
        b"\n.\n",
        b"\n.\r\n",
        b"\r.\r",
        b"\r.\n",
        b"\n.\r",
        b"\r\n\x00.\r\n",
    ];
    for smuggle in sequences {
        let mut c = RawClient::connect(server.mx);
        assert!(c.reply().starts_with("220 "));
        assert!(c.command("EHLO attacker.example").starts_with("250"));
        assert!(c
            .command("MAIL FROM:<attacker@example.org>")
            .starts_with("250"));
        assert!(c.command("RCPT TO:<user@example.test>").starts_with("250"));
        assert!(c.command("DATA").starts_with("354"));
        let mut data = b"From: attacker@example.org\r\nSubject: first\r\n\r\nhello".to_vec();
        data.extend_from_slice(smuggle);
        data.extend_from_slice(
            b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<user@example.test>\r\nDATA\r\n\
              From: ceo@example.test\r\nSubject: smuggled\r\n\r\npay the invoice\r\n.\r\n",
        );
        c.send(&data);
        let reply = c.reply();
        assert!(
            reply.starts_with("554 5.6.0 "),
            "{smuggle:?}: expected a 5xx for the whole message, got {reply:?}"
        );
        // The session is still in step: the smuggled commands were message text, not commands.
        assert!(c.command("QUIT").starts_with("221"));
    }
    let messages = queued(dir.path());
    server.stop();
    assert!(messages.is_empty(), "queued: {messages:?}");
}

#[test]
fn input_pipelined_after_starttls_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let mut c = RawClient::connect(server.submission);
    c.reply();
    assert!(c.command("EHLO client.example").contains("STARTTLS"));
    // CVE-2011-0411: a man in the middle appends a command to STARTTLS.
    c.send(b"STARTTLS\r\nRSET\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("554 5.5.0 "), "{reply:?}");
    assert_eq!(c.reply(), "", "the connection must be closed");
    server.stop();
}
