//! The edge relay in proxy mode in front of Postfix as the internal server: each RCPT is the
//! internal server's to answer, the message's reply is its reply, and nothing is queued here,
//! so nothing can bounce later. The internal server down is 451; recipients of a queued domain
//! in a proxied transaction (or the other way round) get 451 4.5.3.

use std::time::{Duration, Instant};

use crate::harness::{config, have, is_root, queued, RawClient, Server};
use crate::postfix::PostfixMx;

#[test]
fn an_edge_relay_proxies_to_the_internal_server_and_queues_nothing() {
    let test = "an_edge_relay_proxies_to_the_internal_server_and_queues_nothing";
    if !have("/usr/sbin/postfix", test) || !is_root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let internal = PostfixMx::start(&d.join("postfix"));
    // The internal server refuses one kind of message at the end of DATA.
    let checks = d.join("postfix/etc/header_checks");
    std::fs::write(
        &checks,
        "/^Subject: .*forbidden/ REJECT no forbidden subjects here\n",
    )
    .unwrap();
    internal.reconfigure(&[&format!("header_checks = regexp:{}", checks.display())]);
    let config = config(d, "relay_domains = [\"example.net\"]")
        + &format!(
            "\n[[route]]\ndomains = [\"example.net\"]\nrelay = \"127.0.0.2:{}\"\nproxy = true\ntls = \"none\"\n",
            internal.port
        );
    let server = Server::start(d, &config);

    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example.org");
    assert!(c
        .command("MAIL FROM:<sender@example.org>")
        .starts_with("250"));
    // The internal server's own answers, in-session.
    let refused = c.command("RCPT TO:<nobody@example.net>");
    assert!(
        refused.starts_with("550 5.1.1"),
        "{refused}\n{}",
        server.log()
    );
    assert!(refused.contains("nobody@example.net"), "{refused}");
    let taken = c.command("RCPT TO:<bob@example.net>");
    assert!(taken.starts_with("250 2.1.5"), "{taken}\n{}", server.log());
    // A local recipient does not join a proxied transaction.
    assert_eq!(
        c.command("RCPT TO:<user@example.test>"),
        "451 4.5.3 This recipient must go in a separate transaction; send it again after this one\r\n"
    );
    assert!(c.command("DATA").starts_with("354"));
    c.send(b"From: sender@example.org\r\nSubject: passed through\r\n\r\nhello bob\r\n.\r\n");
    let done = c.reply();
    assert!(done.starts_with("250 2.0.0 Ok: queued as"), "{done}");
    // That "queued as" is Postfix's queue id, not ours: nothing is in backstop's queue.
    assert!(queued(d).is_empty());

    // A message the internal server refuses at the end of DATA is refused to the client.
    assert!(c
        .command("MAIL FROM:<sender@example.org>")
        .starts_with("250"));
    assert!(c.command("RCPT TO:<bob@example.net>").starts_with("250"));
    assert!(c.command("DATA").starts_with("354"));
    c.send(b"From: sender@example.org\r\nSubject: a forbidden one\r\n\r\nhello\r\n.\r\n");
    let refused = c.reply();
    assert!(
        refused.starts_with("550 5.7.1") && refused.contains("no forbidden subjects here"),
        "{refused}"
    );
    // A queued transaction takes no proxied recipient either.
    assert!(c
        .command("MAIL FROM:<sender@example.org>")
        .starts_with("250"));
    assert!(c.command("RCPT TO:<user@example.test>").starts_with("250"));
    assert!(c
        .command("RCPT TO:<bob@example.net>")
        .starts_with("451 4.5.3"));
    c.command("RSET");
    c.command("QUIT");

    let deadline = Instant::now() + Duration::from_secs(30);
    while internal.mailbox("example.net/bob").is_empty() {
        assert!(Instant::now() < deadline, "{}", internal.maillog());
        std::thread::sleep(Duration::from_millis(100));
    }
    let delivered = internal.mailbox("example.net/bob");
    assert_eq!(delivered.len(), 1, "only the passed-through message");
    assert!(
        delivered[0].contains("Subject: passed through"),
        "{}",
        delivered[0]
    );
    assert!(
        delivered[0].contains("by mx.backstop.test (backstop)"),
        "{}",
        delivered[0]
    );

    // The internal server down: 451, never an accept.
    drop(internal);
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example.org");
    c.command("MAIL FROM:<sender@example.org>");
    assert_eq!(
        c.command("RCPT TO:<bob@example.net>"),
        "451 4.4.1 The destination server cannot be reached, try again later\r\n"
    );
    c.command("QUIT");
    let messages = queued(d);
    server.stop();
    assert!(
        messages.is_empty(),
        "nothing is ever queued for a proxied domain"
    );
}
