//! The fail2ban filter shipped in etc/fail2ban reads backstop's own log lines: checked with
//! fail2ban's `fail2ban-regex` against the log of real failed logins, in both log formats.

use std::path::Path;
use std::process::Command;

use crate::harness::{config, have, RawClient, Server};

/// AUTH PLAIN as alice with `password` on the submission port; the reply.
fn login(server: &Server, password: &str) -> String {
    use base64::Engine;
    let mut c = RawClient::connect(server.submission);
    c.reply();
    c.command("EHLO client.example.org");
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0alice\0{password}"));
    let reply = c.command(&format!("AUTH PLAIN {token}"));
    c.command("QUIT");
    reply
}

/// How many lines of `log` the filter matches, and the addresses it found.
fn matched(log: &Path) -> (usize, String) {
    let filter =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/fail2ban/filter.d/backstop.conf");
    let out = Command::new("fail2ban-regex")
        .args(["--print-all-matched", "--no-check-all"])
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
    // "Lines: 40 lines, 0 ignored, 3 matched, 37 missed"
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("Lines: "))
        .and_then(|l| l.split(", ").find_map(|p| p.strip_suffix(" matched")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in:\n{text}"));
    (count, text)
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
    assert!(login(&server, "secret").starts_with("235"));
    assert!(login(&server, "wrong").starts_with("535"));
    assert!(login(&server, "wrong").starts_with("535"));
    // Refused unchecked now: counted too.
    assert!(login(&server, "secret").starts_with("454"));
    server.stop();
    let (count, shown) = matched(&d.join("server.log"));
    // Two failures and one refusal; the successful login is not matched.
    assert_eq!(
        count,
        3,
        "{shown}\n{}",
        std::fs::read_to_string(d.join("server.log")).unwrap()
    );
    assert!(shown.contains("127.0.0.1"), "{shown}");
}

#[test]
fn the_fail2ban_filter_finds_failed_logins_in_text_logs() {
    failures_are_found("text");
}

#[test]
fn the_fail2ban_filter_finds_failed_logins_in_json_logs() {
    failures_are_found("json");
}
