//! The receive path: a real client gets 250 with a queue id, and the message survives kill -9.

use std::process::Command;

use backstop_types::{ReversePath, TrustClass};

use crate::harness::{config, have, queue_id_in, queued, Server};

#[test]
fn swaks_message_is_queued_and_survives_kill_9() {
    if !have("swaks", "swaks_message_is_queued_and_survives_kill_9") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let out = Command::new("swaks")
        .args(["--server", &server.mx.to_string()])
        .args(["--from", "sender@example.org", "--to", "user@example.test"])
        .args([
            "--header",
            "Subject: kill-9 survivor",
            "--body",
            "still here",
        ])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "swaks failed:\n{transcript}");
    assert!(
        transcript.contains("<-  250 2.0.0 Ok: queued as "),
        "{transcript}"
    );
    let id = queue_id_in(&transcript);

    // No shutdown, no flush: the 250 already meant "synced to disk".
    server.kill9();
    let server = Server::restart(dir.path());
    let messages = queued(dir.path());
    server.stop();

    assert_eq!(messages.len(), 1, "{messages:?}");
    let (queued_id, envelope, body) = &messages[0];
    assert_eq!(*queued_id, id);
    assert_eq!(envelope.sender.to_string(), "<sender@example.org>");
    assert_eq!(
        envelope.recipients[0].address.to_string(),
        "user@example.test"
    );
    assert_eq!(envelope.trust, TrustClass::Unverified);
    assert_eq!(envelope.client.listener, "mx");
    let body = String::from_utf8_lossy(body);
    assert!(body.starts_with("Received: from "), "{body}");
    assert!(
        body.contains("by mx.backstop.test (backstop) with ESMTP"),
        "{body}"
    );
    assert!(body.contains("Subject: kill-9 survivor\r\n"), "{body}");
    assert!(body.contains("still here"), "{body}");
}

#[test]
fn unauthenticated_relaying_is_refused() {
    if !have("swaks", "unauthenticated_relaying_is_refused") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let out = Command::new("swaks")
        .args(["--server", &server.mx.to_string()])
        .args([
            "--from",
            "spammer@example.org",
            "--to",
            "victim@elsewhere.example",
        ])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        transcript.contains("<** 554 5.7.1 Relay access denied"),
        "{transcript}"
    );
    // Null senders are fine for local recipients that take bounces (postmaster always; others
    // need a BATV tag, see bounces.rs).
    let out = Command::new("swaks")
        .args(["--server", &server.mx.to_string()])
        .args(["--from", "<>", "--to", "postmaster@example.test"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let messages = queued(dir.path());
    // The refusal's line says who asked for what.
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("refused")
            && l.contains("stage=\"rcpt\"")
            && l.contains("helo=")
            && l.contains("from=<spammer@example.org>")
            && l.contains("to=victim@elsewhere.example")
            && l.contains("554 5.7.1 Relay access denied")),
        "{log}"
    );
    server.stop();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].1.sender, ReversePath::Null);
}
