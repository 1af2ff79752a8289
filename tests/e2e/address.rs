//! `backstop address test`: how the running server would handle a recipient, and that asking
//! leaves nothing behind (no rate counted, no greylisting triplet).

use crate::harness::{config, RawClient, Server};

#[test]
fn address_test_says_each_check_the_reply_and_the_route_and_counts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = d.join("recipients");
    std::fs::write(
        &table,
        "bob@example.test\nalias@example.test carol@example.test\n",
    )
    .unwrap();
    let extra = format!(
        "\n[recipients]\ntable = \"{}\"\n\n[rate_limits]\nclient_recipients = \"1/1d\"\n\n[greylist]\nenabled = true\ndelay = 1\n\n[[route]]\ndomains = [\"relay.example\"]\nrelay = \"127.0.0.1:9\"\n",
        table.display()
    );
    let server = Server::start(
        d,
        &(config(d, "relay_domains = [\"relay.example\"]") + &extra),
    );
    let test = |args: &[&str]| {
        let mut all = vec!["address", "test"];
        all.extend_from_slice(args);
        let (ok, out) = server.cli(&all);
        assert!(ok, "{out}");
        out
    };

    let out = test(&["bob@example.test"]);
    assert!(
        out.contains("from <someone@example.org> at 192.0.2.1 on listener mx (not trusted)"),
        "{out}"
    );
    assert!(out.contains("relay        a local domain"), "{out}");
    assert!(out.contains("table        known"), "{out}");
    assert!(
        out.contains("greylist     applies: a first attempt"),
        "{out}"
    );
    assert!(out.contains("4.7.1 for 1 s"), "{out}");
    assert!(
        out.contains("rate         at most 1 recipients per 86400 s for this client"),
        "{out}"
    );
    assert!(out.contains("RCPT         250 2.1.5"), "{out}");
    let maildir = d.join("var/maildir/example.test/bob");
    assert!(
        out.contains(&format!(
            "delivery     into the Maildir {}",
            maildir.display()
        )),
        "{out}"
    );

    let out = test(&["alias@example.test"]);
    assert!(
        out.contains("table        known, delivered to carol@example.test"),
        "{out}"
    );

    let out = test(&["nobody@example.test"]);
    assert!(out.contains("table        unknown"), "{out}");
    assert!(out.contains("RCPT         550 5.1.1"), "{out}");
    assert!(!out.contains("delivery"), "{out}");

    let out = test(&["someone@elsewhere.example"]);
    assert!(
        out.contains("relay        refused by the relay rules"),
        "{out}"
    );
    assert!(out.contains("RCPT         554 5.7.1"), "{out}");

    // A logged-in user may relay anywhere; the route with no catch-all has no way there.
    let out = test(&["--user", "alice", "someone@elsewhere.example"]);
    assert!(out.contains("on listener submission (trusted)"), "{out}");
    assert!(
        out.contains("relay        elsewhere: relayed for a trusted client"),
        "{out}"
    );
    assert!(out.contains("RCPT         250 2.1.5"), "{out}");
    assert!(
        out.contains("delivery     no route takes elsewhere.example"),
        "{out}"
    );

    let out = test(&["x@relay.example", "--client", "203.0.113.9"]);
    assert!(out.contains("relay        a relay domain"), "{out}");
    assert!(
        out.contains("delivery     to 127.0.0.1[127.0.0.1:9] by SMTP"),
        "{out}"
    );

    // A bounce to an untagged local address: BATV refuses it.
    let out = test(&["--sender", "<>", "bob@example.test"]);
    assert!(
        out.contains("batv         a bounce without a valid tag of ours"),
        "{out}"
    );
    assert!(out.contains("RCPT         550 5.7.1"), "{out}");

    // Mistakes are errors, not answers.
    let (ok, out) = server.cli(&["address", "test", "no-at-sign"]);
    assert!(!ok && out.contains("no-at-sign"), "{out}");
    let (ok, out) = server.cli(&["address", "test", "a@example.test", "--listener", "nope"]);
    assert!(
        !ok && out.contains("no listener nope; there are: mx, submission, submissions"),
        "{out}"
    );
    let (ok, out) = server.cli(&["address", "test", "a@example.test", "--client", "x\r\ny"]);
    assert!(
        !ok && out.contains("--client x\\r\\ny: not an IP address"),
        "{out}"
    );

    // JSON for scripts.
    let (ok, json) = server.cli(&["address", "test", "bob@example.test", "--json"]);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["reply"].as_str().map(|r| &r[..3]), Some("250"));

    // Nothing was counted or recorded. Asked three times about the triplet of the real RCPT
    // below (this client, sender and recipient): had a test recorded it, the real attempt,
    // made after the greylisting delay, would pass as a retry; it is greylisted as a first.
    for _ in 0..3 {
        test(&["--client", "127.0.0.1", "bob@example.test"]);
    }
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let rcpt = || {
        let mut c = RawClient::connect(server.mx);
        c.reply();
        c.command("EHLO client.example.org");
        let reply = c.command("MAIL FROM:<someone@example.org>");
        assert!(reply.starts_with("250"), "{reply}");
        let reply = c.command("RCPT TO:<bob@example.test>");
        c.command("QUIT");
        reply
    };
    let first = rcpt();
    assert!(
        first.starts_with("451 4.7.1"),
        "greylisted as a first attempt: {first}"
    );
    // The retry passes greylisting and meets the rate of one recipient a day: had the tests
    // been counted, it would be over it.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let retry = rcpt();
    assert!(retry.starts_with("250"), "within the rate: {retry}");
    let over = rcpt();
    assert!(
        over.starts_with("451 4.7.1"),
        "the rate counts real ones: {over}"
    );
    server.stop();
}

#[test]
fn address_test_needs_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let cfg = dir.path().join("backstop.toml");
    server.stop();
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["address", "test", "bob@example.test", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("admin"), "{said}");
}
