//! Greylisting: the first attempt of a triplet is deferred with 451 4.7.1, a retry after the
//! delay passes, and then the client's network passes at once.

use std::time::Duration;

use crate::harness::{config, RawClient, Server};

fn rcpt(server: &Server, address: &str) -> String {
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO mta.example");
    c.command("MAIL FROM:<news@example.org>");
    let reply = c.command(&format!("RCPT TO:<{address}>"));
    c.command("QUIT");
    reply
}

#[test]
fn first_attempts_are_deferred_and_retries_pass() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let extra =
        "\n[greylist]\nenabled = true\ndelay = \"2s\"\nretry_window = \"1h\"\nauto_pass = \"1d\"\n";
    let server = Server::start(d, &(config(d, "") + extra));
    let first = rcpt(&server, "user@example.test");
    assert!(
        first.starts_with("451 4.7.1 Greylisted, please try again in 2 seconds"),
        "{first}"
    );
    let early = rcpt(&server, "user@example.test");
    assert!(early.starts_with("451 4.7.1 Greylisted"), "{early}");
    std::thread::sleep(Duration::from_millis(2100));
    let retry = rcpt(&server, "user@example.test");
    assert!(retry.starts_with("250 2.1.5"), "{retry}");
    // The network has retried once: a new triplet passes at once.
    let other = rcpt(&server, "other@example.test");
    assert!(other.starts_with("250 2.1.5"), "{other}");
    // The state is in the queue's database: it survives a restart.
    server.stop();
    let server = Server::restart(d);
    assert!(rcpt(&server, "third@example.test").starts_with("250 2.1.5"));
    server.stop();
}
