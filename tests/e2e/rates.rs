//! Rate limits per client address: messages at MAIL and recipients at RCPT get 451 4.7.1 over
//! the limit, new connections 421. (Day-long windows: fixed windows start on multiples of
//! their length, and the test must not straddle one.)

use crate::harness::{config, RawClient, Server};

#[test]
fn clients_over_their_limits_are_told_to_slow_down() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let extra = "\n[rate_limits]\nclient_connections = \"4/1d\"\nclient_messages = \"2/1d\"\nclient_recipients = \"3/1d\"\n";
    let server = Server::start(d, &(config(d, "") + extra));

    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    assert!(c.command("MAIL FROM:<a@example.org>").starts_with("250"));
    for rcpt in ["r1", "r2", "r3"] {
        assert!(c
            .command(&format!("RCPT TO:<{rcpt}@example.test>"))
            .starts_with("250"));
    }
    let over = c.command("RCPT TO:<r4@example.test>");
    assert!(over.starts_with("451 4.7.1 Rate limit exceeded"), "{over}");
    c.command("RSET");
    assert!(c.command("MAIL FROM:<a@example.org>").starts_with("250"));
    c.command("RSET");
    let over = c.command("MAIL FROM:<a@example.org>");
    assert!(over.starts_with("451 4.7.1 Rate limit exceeded"), "{over}");
    drop(c);

    // Connections: one used above, three more are fine, the fifth is refused.
    for _ in 0..3 {
        let mut c = RawClient::connect(server.mx);
        assert!(c.reply().starts_with("220 "));
    }
    let mut refused = RawClient::connect(server.mx);
    let reply = refused.reply();
    assert!(
        reply.starts_with("421 4.7.0 Too many connections from your address in a short time"),
        "{reply}"
    );
    server.stop();
}
