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
