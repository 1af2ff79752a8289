//! The admin commands (`backstop queue ...`, `backstop quarantine ...`) against a running server.

use std::path::Path;
use std::process::{Command, Output};

use backstop_queue::Queue;
use backstop_types::quarantine::Reason;
use backstop_types::{QueueId, UnixTime};

use crate::harness::{config, queue_id_in, RawClient, Server, BIN};

fn cli(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(dir.join("backstop.toml"))
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its standard output.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = cli(dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "backstop {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a command that must fail; returns its standard error.
fn fails(dir: &Path, args: &[&str]) -> String {
    let out = cli(dir, args);
    assert!(!out.status.success(), "backstop {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn send(server: &Server, subject: &str) -> QueueId {
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    c.command("MAIL FROM:<sender@example.org>");
    c.command("RCPT TO:<user@example.test>");
    c.command("RCPT TO:<other@example.test>");
    c.command("DATA");
    c.send(format!("Subject: {subject}\r\n\r\nbody\r\n.\r\n").as_bytes());
    let reply = c.reply();
    c.command("QUIT");
    queue_id_in(&reply)
}

#[test]
fn queue_verbs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &config(d, ""));
    assert_eq!(ok(d, &["queue", "list"]), "Mail queue is empty\n");
    let first = send(&server, "first").to_string();
    let second = send(&server, "second").to_string();

    let list = ok(d, &["queue", "list"]);
    assert!(list.starts_with("ID "), "{list}");
    assert!(list.contains(&first) && list.contains(&second), "{list}");
    assert!(
        list.contains("queued    <sender@example.org> -> user@example.test, other@example.test"),
        "{list}"
    );
    assert!(list.ends_with("-- 2 message(s)\n"), "{list}");
    let json = ok(d, &["queue", "list", "--json"]);
    assert!(json.contains(&format!("\"id\": \"{first}\"")), "{json}");
    assert!(json.contains("\"pending\": 2"), "{json}");
    // qshape's table: both messages, for example.test, under 5 minutes old.
    let shape = ok(d, &["queue", "summary"]);
    assert!(
        shape.contains("\nexample.test      2     2     0"),
        "{shape}"
    );
    assert!(ok(d, &["queue", "summary", "--json"]).contains("\"domain\": \"example.test\""));

    let show = ok(d, &["queue", "show", &first]);
    assert!(
        show.contains(&format!("id:            {first}\n")),
        "{show}"
    );
    assert!(
        show.contains("sender:        <sender@example.org>\n"),
        "{show}"
    );
    assert!(
        show.contains("recipient:     user@example.test  pending, 0 attempt(s), next "),
        "{show}"
    );
    assert!(show.contains("trust:         unverified\n"), "{show}");
    assert!(show.contains("Subject: first\n"), "{show}");

    assert_eq!(
        ok(d, &["queue", "hold", &first]),
        format!("{first}: held\n")
    );
    assert!(ok(d, &["queue", "list"]).contains(&format!("{first}  ")));
    let list = ok(d, &["queue", "list", "--json"]);
    assert!(list.contains("\"held\": true"), "{list}");
    // Flush leaves the held message alone.
    assert_eq!(ok(d, &["queue", "flush"]), "flushed 1 message(s)\n");
    assert!(fails(d, &["queue", "flush", &first]).contains("not in the queue, or held"));
    assert_eq!(
        ok(d, &["queue", "release", &first]),
        format!("{first}: released\n")
    );
    assert_eq!(ok(d, &["queue", "flush", &first]), "flushed 1 message(s)\n");

    assert_eq!(
        ok(d, &["queue", "delete", &second]),
        format!("{second}: deleted\n")
    );
    let list = ok(d, &["queue", "list"]);
    assert!(
        !list.contains(&second) && list.ends_with("-- 1 message(s)\n"),
        "{list}"
    );
    assert!(
        fails(d, &["queue", "delete", &second]).contains(&format!("{second}: not in the queue"))
    );
    assert!(fails(d, &["queue", "show", "nonsense"]).contains("a queue id is 16 hex digits"));

    // The message itself, as postcat -q shows it: as text, cut at --limit, or raw.
    let body = ok(d, &["queue", "show", &first, "--body"]);
    assert!(
        body.contains("\n--- message (") && body.ends_with("Subject: first\n\nbody\n"),
        "{body}"
    );
    let cut = ok(d, &["queue", "show", &first, "--body", "--limit", "10"]);
    assert!(cut.contains("more octets not shown"), "{cut}");
    let raw = cli(d, &["queue", "show", &first, "--raw"]);
    assert!(raw.status.success());
    assert!(raw.stdout.starts_with(b"Received: from "));
    assert!(raw.stdout.ends_with(b"Subject: first\r\n\r\nbody\r\n"));
    assert!(fails(d, &["queue", "show", &first, "--body", "--limit", "lots"]).contains("--limit"));
    server.stop();

    // Without a running server, what only reads is answered from the queue on disk (as mailq
    // and postcat are); what changes the queue says what is wrong.
    let out = cli(d, &["queue", "list"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&first));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the server is not running: read from"));
    assert!(ok(d, &["queue", "show", &first, "--body"]).contains("Subject: first"));
    assert!(
        fails(d, &["queue", "delete", &first]).contains("cannot reach the server's admin socket")
    );
}

/// A message's own bytes never drive the terminal: escape sequences and control characters in
/// its header and body are shown escaped.
#[test]
fn a_hostile_message_is_shown_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &config(d, ""));
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    c.command("MAIL FROM:<sender@example.org>");
    c.command("RCPT TO:<user@example.test>");
    c.command("DATA");
    c.send(b"Subject: \x1b[2J\x1b]0;owned\x07\r\n\r\nbody \x1b[31mred\r\n.\r\n");
    let id = queue_id_in(&c.reply()).to_string();
    let shown = ok(d, &["queue", "show", &id, "--body"]);
    assert!(
        !shown.contains('\x1b') && !shown.contains('\x07'),
        "{shown:?}"
    );
    assert!(
        shown.contains("Subject: \\u{1b}[2J\\u{1b}]0;owned\\u{7}\n"),
        "{shown}"
    );
    assert!(shown.contains("body \\u{1b}[31mred\n"), "{shown}");
    // --raw is for files and programs: the octets as they are.
    let raw = cli(d, &["queue", "show", &id, "--raw"]);
    assert!(raw.stdout.ends_with(b"body \x1b[31mred\r\n"));
    server.stop();
}

#[test]
fn quarantine_verbs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &config(d, ""));
    let keep = send(&server, "to release");
    let drop_it = send(&server, "to delete");
    server.stop();
    // Nothing in backstop quarantines yet (the content filter and the bounce gate will): put
    // two messages there through the queue itself while the server is down.
    {
        let queue = Queue::open(&d.join("var/queue")).unwrap();
        for id in [keep, drop_it] {
            assert_eq!(
                queue
                    .quarantine(
                        id,
                        &Reason::hold("test: suspicious attachment"),
                        UnixTime(1_800_000_000)
                    )
                    .unwrap(),
                backstop_queue::Hold::Held
            );
        }
    }
    let server = Server::restart(d);
    let (keep, drop_it) = (keep.to_string(), drop_it.to_string());
    assert_eq!(ok(d, &["queue", "list"]), "Mail queue is empty\n");
    let list = ok(d, &["quarantine", "list"]);
    assert!(list.contains(&keep) && list.contains(&drop_it), "{list}");
    assert!(list.contains("test: suspicious attachment"), "{list}");
    let show = ok(d, &["quarantine", "show", &keep]);
    assert!(
        show.contains("reason:        test: suspicious attachment\n"),
        "{show}"
    );
    assert!(show.contains("Subject: to release\n"), "{show}");
    // Judged before release: the message itself (also while the server is down).
    let body = ok(d, &["quarantine", "show", &keep, "--body"]);
    assert!(body.ends_with("Subject: to release\n\nbody\n"), "{body}");
    server.stop();
    assert!(ok(d, &["quarantine", "list"]).contains("test: suspicious attachment"));
    assert!(ok(d, &["quarantine", "show", &keep, "--body"]).contains("Subject: to release"));
    let server = Server::restart(d);
    assert!(ok(d, &["quarantine", "list", "--json"])
        .contains("\"reason\": \"test: suspicious attachment\""));

    assert_eq!(
        ok(d, &["quarantine", "release", &keep]),
        format!(
            "{keep}: released from quarantine into the queue as {keep} for user@example.test, other@example.test\n"
        )
    );
    assert!(ok(d, &["queue", "list"]).contains(&keep));
    assert_eq!(
        ok(d, &["quarantine", "delete", &drop_it]),
        format!("{drop_it}: deleted\n")
    );
    assert_eq!(ok(d, &["quarantine", "list"]), "Quarantine is empty\n");
    assert!(fails(d, &["quarantine", "show", &drop_it]).contains("not in quarantine"));
    server.stop();
}

/// Sends one message from `from` to `to`; its queue id.
fn send_from(server: &Server, from: &str, to: &str) -> String {
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    c.command(&format!("MAIL FROM:<{from}>"));
    c.command(&format!("RCPT TO:<{to}>"));
    c.command("DATA");
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n");
    let reply = c.reply();
    c.command("QUIT");
    queue_id_in(&reply).to_string()
}

/// `backstop ARGS` with the config found through BACKSTOP_CONFIG (no --config) and `stdin`.
fn cli_env(dir: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .env("BACKSTOP_CONFIG", dir.join("backstop.toml"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// postsuper's habits: several ids at once, ALL, ids on standard input, filters; the config
/// found through BACKSTOP_CONFIG.
#[test]
fn queue_and_quarantine_verbs_take_several_ids_all_stdin_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(d, &config(d, ""));
    let a = send_from(&server, "news@lists.example.org", "user@example.test");
    let b = send_from(&server, "news@lists.example.org", "other@example.test");
    let c = send_from(&server, "friend@example.net", "user@example.test");
    let out = cli_env(d, &["queue", "list"], "");
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && list.ends_with("-- 3 message(s)\n"),
        "{list}"
    );

    // Several ids.
    assert_eq!(
        ok(d, &["queue", "hold", &a, &b]),
        format!("{a}: held\n{b}: held\n")
    );
    // A flush of ALL leaves the held ones held (and says nothing about them).
    assert_eq!(ok(d, &["queue", "flush", "ALL"]), "flushed 1 message(s)\n");
    // An id named beside a filter that is not in the queue is reported, not skipped.
    let out = cli(
        d,
        &[
            "queue",
            "hold",
            "00000000000000ff",
            "--from",
            "@example.net",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("00000000000000ff: not in the queue"));
    // ALL narrowed by the sender's domain: the two held ones, not the third.
    let released = ok(
        d,
        &["queue", "release", "ALL", "--from", "@lists.example.org"],
    );
    assert_eq!(released, format!("{a}: released\n{b}: released\n"));
    // Nothing older than a day.
    let out = cli(d, &["queue", "delete", "ALL", "--older-than", "1d"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no message matches"));
    // Ids from standard input, as from `jq -r '.[].id'`; an unknown one fails alone.
    let out = cli_env(
        d,
        &["queue", "delete", "-"],
        &format!("{c}\n0000000000000bad\n"),
    );
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{c}: deleted\n")
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("0000000000000bad: not in the queue"));
    // A filter on a recipient domain.
    let json = ok(
        d,
        &[
            "queue",
            "delete",
            "ALL",
            "--to-domain",
            "EXAMPLE.test",
            "--json",
        ],
    );
    assert!(
        json.contains(&format!("\"id\": \"{a}\"")) && json.contains("\"ok\": true"),
        "{json}"
    );
    assert_eq!(ok(d, &["queue", "list"]), "Mail queue is empty\n");
    assert!(fails(d, &["queue", "delete"]).contains("name the messages"));
    assert!(fails(d, &["queue", "delete", "ALL", "--older-than", "soon"]).contains("--older-than"));

    // The quarantine: by reason.
    let virus = send_from(&server, "x@example.net", "user@example.test");
    let odd = send_from(&server, "y@example.net", "user@example.test");
    server.stop();
    {
        let queue = Queue::open(&d.join("var/queue")).unwrap();
        let id = |s: &str| s.parse::<QueueId>().unwrap();
        assert_eq!(
            queue
                .quarantine(
                    id(&virus),
                    &Reason::content("clamd", "clamd", "Eicar-Test-Signature"),
                    UnixTime(1_800_000_000)
                )
                .unwrap(),
            backstop_queue::Hold::Held
        );
        assert_eq!(
            queue
                .quarantine(
                    id(&odd),
                    &Reason::content("rspamd", "rspamd", "add header"),
                    UnixTime(1_800_000_000)
                )
                .unwrap(),
            backstop_queue::Hold::Held
        );
    }
    let server = Server::restart(d);
    assert_eq!(
        ok(d, &["quarantine", "delete", "ALL", "--reason", "eicar"]),
        format!("{virus}: deleted\n")
    );
    let out = cli_env(d, &["quarantine", "release", "-"], &odd);
    assert!(out.status.success());
    assert_eq!(ok(d, &["quarantine", "list"]), "Quarantine is empty\n");
    server.stop();
}

#[test]
fn admin_api_over_loopback_http_needs_the_token() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = "0123456789abcdef-test-token";
    std::fs::write(d.join("admin.token"), format!("{token}\n")).unwrap();
    // The token's file must be its owner's alone, or the config is refused.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        d.join("admin.token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // A free loopback port for the admin API (the CLI must know it, so not port 0).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!(
        "\n[admin]\nhttp = \"127.0.0.1:{port}\"\ntoken_file = \"{}\"\n",
        d.join("admin.token").display()
    );
    let server = Server::start(d, &(config(d, "") + &extra));
    let id = send(&server, "over http").to_string();
    assert!(ok(d, &["queue", "list"]).contains(&id));
    assert_eq!(ok(d, &["queue", "hold", &id]), format!("{id}: held\n"));
    // The Unix socket is served beside HTTP, its owner's alone.
    {
        use std::os::unix::fs::MetadataExt;
        let socket = std::fs::metadata(d.join("var/admin.sock")).expect("the socket too");
        assert_eq!(socket.mode() & 0o777, 0o600);
    }

    let raw = |request: String| {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    let body = r#"{"command":"queue-delete","id":"ID"}"#.replace("ID", &id);
    let without = raw(format!(
        "POST /v1 HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert!(
        without.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{without}"
    );
    let wrong = raw(format!(
        "POST /v1 HTTP/1.1\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
        "x".repeat(token.len()),
        body.len()
    ));
    assert!(wrong.starts_with("HTTP/1.1 401 "), "{wrong}");
    // Any other path is the console, which asks to log in first.
    let path = raw(format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"));
    assert!(path.starts_with("HTTP/1.1 401 "), "{path}");
    assert!(path.contains("name=\"token\""), "{path}");
    // The refused requests changed nothing.
    assert!(ok(d, &["queue", "list"]).contains(&id));
    let right = raw(format!(
        "POST /v1 HTTP/1.1\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert!(right.starts_with("HTTP/1.1 200 OK\r\n"), "{right}");
    assert!(
        right.ends_with(r#"{"ok":true,"data":{"count":1}}"#),
        "{right}"
    );
    assert_eq!(ok(d, &["queue", "list"]), "Mail queue is empty\n");
    server.stop();
}
