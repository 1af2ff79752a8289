//! Recipient validation from a table file: unknown local recipients get 550 5.1.1 at RCPT, so
//! nothing is accepted that could only bounce later; the table reloads on change and SIGHUP.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{config, queued, RawClient, Server, BIN};

fn rcpt(server: &Server, address: &str) -> String {
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    c.command("MAIL FROM:<sender@example.org>");
    let reply = c.command(&format!("RCPT TO:<{address}>"));
    c.command("QUIT");
    reply
}

/// Waits until `address` gets a reply starting with `code` (the table is polled every 2 s).
fn eventually(server: &Server, address: &str, code: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let reply = rcpt(server, address);
        if reply.starts_with(code) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{address}: still {reply:?}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn unknown_recipients_are_refused_at_rcpt_and_the_table_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = d.join("recipients");
    std::fs::write(
        &table,
        "user@example.test\nsales@example.test  user@example.test, boss@example.test\nboss@example.test\n",
    )
    .unwrap();
    let extra = format!("\n[recipients]\ntable = \"{}\"\n", table.display());
    let server = Server::start(d, &(config(d, "") + &extra));

    assert!(rcpt(&server, "user@example.test").starts_with("250 2.1.5"));
    assert!(rcpt(&server, "USER@example.test").starts_with("250 2.1.5"));
    let unknown = rcpt(&server, "nobody@example.test");
    assert!(
        unknown.starts_with("550 5.1.1 Recipient address rejected: user unknown"),
        "{unknown}"
    );
    // postmaster is always accepted (RFC 5321 4.5.1).
    assert!(rcpt(&server, "postmaster@example.test").starts_with("250 "));

    // An alias expands in the envelope; the address the client gave is kept as ORCPT.
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    c.command("MAIL FROM:<sender@example.org>");
    assert!(c.command("RCPT TO:<sales@example.test>").starts_with("250"));
    c.command("DATA");
    c.send(b"Subject: alias\r\n\r\nhi\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued as "));
    c.command("QUIT");
    let messages = queued(d);
    let recipients: Vec<(String, Option<String>)> = messages[0]
        .1
        .recipients
        .iter()
        .map(|r| {
            (
                r.address.to_string(),
                r.orcpt.as_ref().map(|o| o.to_stored()),
            )
        })
        .collect();
    assert_eq!(
        recipients,
        [
            (
                "user@example.test".to_owned(),
                Some("rfc822;sales@example.test".to_owned())
            ),
            (
                "boss@example.test".to_owned(),
                Some("rfc822;sales@example.test".to_owned())
            ),
        ]
    );

    // An edit is picked up without a signal.
    std::fs::write(&table, "user@example.test\nnewcomer@example.test\n").unwrap();
    eventually(&server, "newcomer@example.test", "250");
    assert!(rcpt(&server, "boss@example.test").starts_with("550 5.1.1"));

    // A broken edit is refused, even on SIGHUP: the table in force stays.
    std::fs::write(&table, "user@example.test\nthis is not an address\n").unwrap();
    let pid = server.pid().to_string();
    Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(rcpt(&server, "newcomer@example.test").starts_with("250"));
    assert!(server
        .log()
        .contains("recipient table not reloaded; the previous one stays"));
    server.stop();

    // check-config reports the table's own file and line.
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(d.join("backstop.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("recipients.table: {}:2: ", table.display())),
        "{stderr}"
    );
}
