//! Callahead: an edge relay verifies recipients at RCPT by asking the internal server (Debian's
//! Postfix here) with a real probe sender, and answers 451 when the internal server is down.

use crate::harness::{config, have, is_root, Server};
use crate::postfix::PostfixMx;

#[test]
fn an_edge_relay_asks_the_internal_server() {
    let test = "an_edge_relay_asks_the_internal_server";
    if !have("/usr/sbin/postfix", test) || !is_root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mx = PostfixMx::start(&d.join("postfix"));
    let config = config(d, "relay_domains = [\"example.net\"]")
        + &format!(
            "\n[[route]]\ndomains = [\"example.net\"]\nrelay = \"127.0.0.2:{}\"\nhost = \"peer-mx.example.net\"\ncallahead = true\n",
            mx.port
        );
    let server = Server::start(d, &config);
    let mut c = server.ready_for_rcpt();
    let reply = c.command("RCPT TO:<bob@example.net>");
    assert!(reply.starts_with("250"), "{reply}\n{}", server.log());
    let reply = c.command("RCPT TO:<nobody@example.net>");
    assert!(reply.starts_with("550 5.1.1"), "{reply}");
    // The probe used a real sender, never <>, and nothing was queued at Postfix.
    let maillog = mx.maillog();
    assert!(
        maillog.contains("from=<postmaster@mx.backstop.test> to=<nobody@example.net>"),
        "{maillog}"
    );
    assert!(mx.mailbox("example.net/bob").is_empty());

    // The internal server goes down: new recipients get 451, remembered ones still pass.
    drop(mx);
    let reply = c.command("RCPT TO:<carol@example.net>");
    assert!(reply.starts_with("451 4.4.3"), "{reply}");
    assert!(c.command("RCPT TO:<bob@example.net>").starts_with("250"));
    assert!(c
        .command("RCPT TO:<nobody@example.net>")
        .starts_with("550 5.1.1"));
    c.command("QUIT");
    server.stop();
}
