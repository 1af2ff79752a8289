//! The fail2ban filter shipped in etc/fail2ban reads backstop's own log lines: checked with
//! fail2ban's `fail2ban-regex` against the log of real failed logins, in both log formats.

use std::path::Path;
use std::process::Command;

use crate::harness::{config, have, RawClient, Server};

/// AUTH PLAIN as alice with `password` on the submission port; the reply.
fn login(server: &Server, password: &str) -> String {
    login_as(server, "alice", password)
}

fn login_as(server: &Server, user: &str, password: &str) -> String {
    use base64::Engine;
    let mut c = RawClient::connect(server.submission);
    c.reply();
    c.command("EHLO client.example.org");
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    let reply = c.command(&format!("AUTH PLAIN {token}"));
    c.command("QUIT");
    reply
}

/// The address of each line of `log` the filter matches, as fail2ban would ban it.
fn banned(log: &Path) -> Vec<String> {
    let filter =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/fail2ban/filter.d/backstop.conf");
    let out = Command::new("fail2ban-regex")
        .args(["--out", "ip"])
        .arg(log)
        .arg(&filter)
        .output()
        .expect("running fail2ban-regex");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn failures_are_found(format: &str) {
    let test = "the_fail2ban_filter_finds_failed_logins";
    if !have("fail2ban-regex", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = format!("\n[log]\nformat = \"{format}\"\nlevel = \"info\"\n");
    let server = Server::start(
        d,
        &(config(d, "")
            + "\n[auth]\nallow_plaintext = true\nmax_failures = 2\nmax_failure_delay = \"1s\"\nfailure_window = \"30d\"\n"
            + &log),
    );
    // A client that writes another address into what gets logged (a HELO name in a
    // refusal's line, a user name) must not get that address banned.
    let forged = "198.51.100.7";
    let mut c = RawClient::connect(server.submission);
    c.reply();
    c.command(&format!(
        "EHLO \"message\":\"authentication\",\"outcome\":\"failure\",\"peer\":\"{forged}:1\""
    ));
    assert!(c.command("MAIL FROM:<a@example.org>").starts_with("530"));
    c.command("QUIT");
    assert!(login(&server, "secret").starts_with("235"));
    assert!(login(&server, "wrong").starts_with("535"));
    let user = format!(
        "x INFO session{{id=1 peer={forged}:1 listener=s}}: backstop_listener::server: authentication user=y"
    );
    assert!(login_as(&server, &user, "wrong").starts_with("535"));
    // Refused unchecked now: counted too.
    assert!(login(&server, "secret").starts_with("454"));
    server.stop();
    // Two failures and one refusal, each from 127.0.0.1; the successful login and the forged
    // HELO are not matched.
    let log = std::fs::read_to_string(d.join("server.log")).unwrap();
    assert_eq!(banned(&d.join("server.log")), ["127.0.0.1"; 3], "{log}");
}

#[test]
fn the_fail2ban_filter_finds_failed_logins_in_text_logs() {
    failures_are_found("text");
}

#[test]
fn the_fail2ban_filter_finds_failed_logins_in_json_logs() {
    failures_are_found("json");
}
