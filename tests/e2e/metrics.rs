//! `GET /metrics`, read with curl while the server works: the counters move with what the
//! clients and the delivery agent do.

use std::time::{Duration, Instant};

use crate::harness::{config, free_port, have, RawClient, Server};

fn scrape(port: u16) -> String {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{port}/metrics"),
        ])
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the sample `name` (with its labels) in `text`.
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn metrics_move_with_sessions_refusals_and_deliveries() {
    let test = "metrics_move_with_sessions_refusals_and_deliveries";
    if !have("curl", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let config = config(d, "").replace("[delivery]\npaused = true", "[delivery]\npaused = false")
        + &format!("\n[metrics]\naddress = \"127.0.0.1:{port}\"\n");
    let server = Server::start(d, &config);
    let before = scrape(port);
    assert_eq!(value(&before, "smtp_messages_accepted_total"), 0.0);
    assert_eq!(value(&before, "queue_messages"), 0.0);

    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    let during = scrape(port);
    assert_eq!(value(&during, "smtp_sessions_open"), 1.0);
    c.command("MAIL FROM:<sender@example.org>");
    assert!(c
        .command("RCPT TO:<nobody@elsewhere.example>")
        .starts_with("554 5.7.1"));
    assert!(c.command("RCPT TO:<user@example.test>").starts_with("250"));
    c.command("DATA");
    c.send(b"Subject: counted\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued as"));
    c.command("QUIT");
    drop(c);

    // The delivery agent takes it into the maildir; wait until the metrics say so.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let text = scrape(port);
        if value(&text, "delivery_recipients_total{outcome=\"delivered\"}") >= 1.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered:\n{text}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    server.stop();
    assert_eq!(value(&after, "smtp_sessions_total"), 1.0);
    assert_eq!(value(&after, "smtp_messages_accepted_total"), 1.0);
    assert_eq!(
        value(
            &after,
            "smtp_rejections_total{stage=\"rcpt\",check=\"relay\",code=\"5.7.1\"}"
        ),
        1.0
    );
    assert_eq!(value(&after, "smtp_content_check_seconds_count"), 0.0);
    assert_eq!(value(&after, "dsn_sent_total"), 0.0);
    for name in ["queue_oldest_seconds", "quarantine_messages"] {
        assert!(after.contains(&format!("\n{name} ")), "{name}:\n{after}");
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_the_session_and_transaction_spans() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &(config(d, "") + "\n[log]\nformat = \"json\"\n"));
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    c.command("MAIL FROM:<sender@example.org>");
    c.command("RCPT TO:<user@example.test>");
    c.command("DATA");
    c.send(b"Subject: logged\r\n\r\nhello\r\n.\r\n");
    let reply = c.reply();
    c.command("QUIT");
    let log = server.log();
    server.stop();
    let id = crate::harness::queue_id_in(&reply).to_string();
    let mut accepted = None;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if event["fields"]["message"] == "accepted" {
            accepted = Some(event);
        }
    }
    let accepted = accepted.unwrap_or_else(|| panic!("no accepted event in:\n{log}"));
    assert_eq!(accepted["fields"]["queue_id"], id.as_str(), "{accepted}");
    assert_eq!(accepted["level"], "INFO");
    let session = &accepted["spans"][0];
    assert_eq!(session["name"], "session", "{accepted}");
    assert_eq!(session["listener"], "mx", "{accepted}");
    assert!(session["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    // Inside it, the transaction's span, with the queue id.
    let txn = &accepted["spans"][1];
    assert_eq!(txn["name"], "txn", "{accepted}");
    assert_eq!(txn["queue_id"], id.as_str(), "{accepted}");
}

/// Session ids never start over: a restarted server's sessions do not reuse the ids of the
/// previous run's, so the log lines of two runs are not confused.
#[test]
fn session_ids_are_unique_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let connect = |server: &Server| {
        let mut c = RawClient::connect(server.mx);
        c.reply();
        c.command("QUIT");
    };
    let server = Server::start(d, &config(d, ""));
    connect(&server);
    connect(&server);
    server.stop();
    let server = Server::restart(d);
    connect(&server);
    server.stop();
    let log = std::fs::read_to_string(d.join("server.log")).unwrap();
    let mut ids: Vec<&str> = log
        .split("session{id=")
        .skip(1)
        .filter_map(|rest| rest.split(' ').next())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "{ids:?}\n{log}");
}

/// With JSON logs, everything the server writes is JSON: standard output stays empty (what it
/// announces at start is a log event), and every line on standard error is an object.
#[test]
fn json_logs_leave_nothing_else_on_stdout_or_stderr() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = config(d, "") + "\n[log]\nformat = \"json\"\n";
    let file = d.join("backstop.toml");
    std::fs::write(&file, text).unwrap();
    let child = Command::new(crate::harness::BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .current_dir(d)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Up once the admin socket is there; then stop it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.join("var/admin.sock").exists() {
        assert!(Instant::now() < deadline, "never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("backstop: listener mx (mx) on 127.0.0.1:"),
        "{stderr}"
    );
    for line in stderr.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(event["fields"]["message"].is_string(), "{line}");
    }
}

/// A fatal error after start (a port taken) is a JSON log event too, not plain text.
#[test]
fn with_json_logs_a_fatal_error_is_a_json_event() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = config(d, "").replace(
        "name = \"mx\"\naddress = \"127.0.0.1:0\"",
        &format!("name = \"mx\"\naddress = \"127.0.0.1:{port}\""),
    ) + "\n[log]\nformat = \"json\"\n";
    assert!(text.contains(&format!("127.0.0.1:{port}")));
    let file = d.join("backstop.toml");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["serve", "--config"])
        .arg(&file)
        .current_dir(d)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut fatal = None;
    for line in stderr.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        if event["fields"]["message"] == "stopped: the server cannot run" {
            fatal = event["fields"]["error"].as_str().map(str::to_owned);
        }
    }
    let fatal = fatal.unwrap_or_else(|| panic!("no fatal event:\n{stderr}"));
    assert!(fatal.contains("cannot listen on 127.0.0.1:"), "{fatal}");
    drop(taken);
}
