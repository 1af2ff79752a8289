//! `backstop sendmail` (and `backstop` run as `sendmail`): the command cron and scripts use,
//! submitting through the server's local socket as the Unix user it runs as.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use backstop_types::TrustClass;

use crate::harness::{config, queued, Server, BIN};

/// Runs `program` (the binary, or a link to it named sendmail) with `args`, `message` on
/// standard input.
fn run(program: &Path, args: &[&str], message: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .env_remove("BACKSTOP_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running sendmail");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(message.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The name of the user the tests run as.
fn me() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn mail_style_and_t_style_messages_are_queued_as_the_local_user() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let cfg = dir.path().join("backstop.toml");
    let cfg = cfg.to_str().unwrap();
    let socket = dir.path().join("var/sendmail.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "the socket is open; its directory decides");

    // As mail(1) calls it: recipients as arguments, a header of its own, -i.
    let out = run(
        Path::new(BIN),
        &[
            "sendmail",
            "--config",
            cfg,
            "-i",
            "--",
            "bob@example.test",
            "carol@elsewhere.example",
        ],
        "To: bob@example.test\nSubject: from mail\n\nline\n.\nafter the dot\n",
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), server.log());

    // As cron and scripts call it, run as `sendmail`: -t, -f, -F, the message ending at ".".
    let link = dir.path().join("sendmail");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let out = run(
        &link,
        &["-C", cfg, "-t", "-f", "cron@example.test", "-F", "Cron Daemon"],
        "To: Dave <dave@example.test>\nCc: erin@elsewhere.example\nBcc: hidden@elsewhere.example\nSubject: from cron\n\nreport\n.\nnever sent\n",
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), server.log());

    let messages = queued(dir.path());
    assert_eq!(messages.len(), 2, "{}", server.log());
    let user = me();
    for (_, envelope, _) in &messages {
        assert_eq!(
            envelope.trust,
            TrustClass::Authenticated { user: user.clone() },
            "a local user is an authenticated submitter: failures are reported to it"
        );
        assert_eq!(envelope.client.listener, "sendmail");
    }
    let text = |n: usize| String::from_utf8_lossy(&messages[n].2).into_owned();
    let (mail, cron) = match text(0).contains("from mail") {
        true => (0, 1),
        false => (1, 0),
    };
    let to = |n: usize| -> Vec<String> {
        messages[n]
            .1
            .recipients
            .iter()
            .map(|r| r.address.to_string())
            .collect()
    };
    let hostname_sender = format!("{user}@mx.backstop.test");
    let mailname = std::fs::read_to_string("/etc/mailname").ok();
    let sender = |n: usize| messages[n].1.sender.address().map(ToString::to_string);
    let sender = sender(mail).unwrap_or_default();
    assert!(
        sender == hostname_sender
            || mailname.is_some_and(|m| sender == format!("{user}@{}", m.trim())),
        "{sender}"
    );
    assert_eq!(to(mail), ["bob@example.test", "carol@elsewhere.example"]);
    let body = text(mail);
    assert!(
        body.contains("\r\n.\r\nafter the dot\r\n"),
        "-i keeps a lone dot:\n{body}"
    );
    assert!(body.contains("Message-ID: <"), "{body}");
    assert!(body.contains("\r\nDate: "), "{body}");
    assert!(
        body.contains(&format!("(Authenticated sender: {user})")),
        "{body}"
    );

    assert_eq!(
        messages[cron]
            .1
            .sender
            .address()
            .map(ToString::to_string)
            .as_deref(),
        Some("cron@example.test")
    );
    assert_eq!(
        to(cron),
        [
            "dave@example.test",
            "erin@elsewhere.example",
            "hidden@elsewhere.example"
        ]
    );
    let body = text(cron);
    assert!(
        body.contains("From: Cron Daemon <cron@example.test>\r\n"),
        "{body}"
    );
    assert!(!body.contains("hidden@"), "Bcc is taken out:\n{body}");
    assert!(
        body.ends_with("\r\n\r\nreport\r\n"),
        "a lone dot ends it:\n{body}"
    );
    server.stop();
}

#[test]
fn refusals_are_said_on_standard_error_and_a_stopped_server_is_exit_75() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let cfg = dir.path().join("backstop.toml");
    let cfg = cfg.to_str().unwrap();

    // One recipient the server refuses at RCPT (no Maildir can hold it), one it takes.
    let out = run(
        Path::new(BIN),
        &[
            "sendmail",
            "--config",
            cfg,
            "ok@example.test",
            "a/b@example.test",
        ],
        "Subject: partly\n\nx\n",
    );
    let said = stderr(&out);
    assert!(out.status.success(), "sent to one: {said}");
    assert!(said.contains("<a/b@example.test>: refused: 5"), "{said}");
    assert!(said.contains("sent to 1 of 2 recipients"), "{said}");

    // Refused for every recipient: 69, nothing queued.
    let out = run(
        Path::new(BIN),
        &["sendmail", "--config", cfg, "a/b@example.test"],
        "Subject: none\n\nx\n",
    );
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert_eq!(queued(dir.path()).len(), 1);

    // Mistakes of the caller: 64 and 65, before any connection.
    let out = run(Path::new(BIN), &["sendmail", "--config", cfg, "-Q"], "");
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let out = run(
        Path::new(BIN),
        &["sendmail", "--config", cfg],
        "Subject: x\n\n",
    );
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
    assert!(stderr(&out).contains("no recipients"));

    server.stop();
    let out = run(
        Path::new(BIN),
        &["sendmail", "--config", cfg, "ok@example.test"],
        "Subject: later\n\nx\n",
    );
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("backstop is not running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_socket_offers_neither_tls_nor_auth_and_takes_any_sender_from_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let stream = UnixStream::connect(dir.path().join("var/sendmail.sock")).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut reply = || {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    };
    assert!(reply().starts_with("220 "));
    writer.write_all(b"EHLO localhost\r\n").unwrap();
    let ehlo = reply();
    assert!(ehlo.starts_with("250"), "{ehlo}");
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    writer
        .write_all(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n")
        .unwrap();
    assert!(reply().starts_with("503"), "already logged in");
    writer
        .write_all(b"MAIL FROM:<anyone@anywhere.example>\r\n")
        .unwrap();
    assert!(reply().starts_with("250"));
    writer.write_all(b"RCPT TO:<far@away.example>\r\n").unwrap();
    let rcpt = reply();
    assert!(rcpt.starts_with("250"), "a local user may relay: {rcpt}");
    writer.write_all(b"QUIT\r\n").unwrap();
    assert!(reply().starts_with("221"));
    server.stop();
}

#[test]
fn a_bare_name_is_a_local_user_and_an_untrusted_user_sends_only_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    // root is not trusted here: it is held to its own address, as every user is by default.
    let extra = "\n[sendmail]\ntrusted_users = []\n";
    let server = Server::start(dir.path(), &(config(dir.path(), "") + extra));
    let cfg = dir.path().join("backstop.toml");
    let cfg = cfg.to_str().unwrap();
    let user = me();
    let mailname = std::fs::read_to_string("/etc/mailname")
        .map(|m| m.trim().to_owned())
        .unwrap_or_default();
    let domain = if mailname.is_empty() {
        "mx.backstop.test".to_owned()
    } else {
        mailname
    };

    // As cron writes it when MAILTO is unset: a bare `root`.
    let out = run(
        Path::new(BIN),
        &[
            "sendmail",
            "--config",
            cfg,
            "-FCronDaemon",
            "-i",
            "-B8BITMIME",
            "-oem",
            "root",
        ],
        "Subject: Cron <root@host> run-parts\n\noutput\n",
    );
    assert!(out.status.success(), "{}\n{}", stderr(&out), server.log());
    let messages = queued(dir.path());
    assert_eq!(messages.len(), 1);
    let to: Vec<String> = messages[0]
        .1
        .recipients
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    assert_eq!(to, [format!("root@{domain}")]);

    // Someone else's address, as envelope sender or as From:, is refused: no report could go
    // to it and nothing is signed in its name.
    let out = run(
        Path::new(BIN),
        &[
            "sendmail",
            "--config",
            cfg,
            "-f",
            "ceo@example.test",
            "x@elsewhere.example",
        ],
        "Subject: forged\n\nx\n",
    );
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    let out = run(
        Path::new(BIN),
        &["sendmail", "--config", cfg, "x@elsewhere.example"],
        "From: ceo@example.test\nSubject: forged\n\nx\n",
    );
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    // Its own address at a local domain is its own.
    let out = run(
        Path::new(BIN),
        &[
            "sendmail",
            "--config",
            cfg,
            "-f",
            &format!("{user}@example.test"),
            "x@elsewhere.example",
        ],
        "Subject: mine\n\nx\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(queued(dir.path()).len(), 2);
    server.stop();
}

#[test]
fn a_socket_path_that_names_another_file_is_an_error_and_the_file_stays() {
    let dir = tempfile::tempdir().unwrap();
    let var = dir.path().join("var");
    std::fs::create_dir_all(&var).unwrap();
    std::fs::write(var.join("precious.key"), "secret").unwrap();
    let cfg = dir.path().join("backstop.toml");
    std::fs::write(
        &cfg,
        config(dir.path(), "") + "\n[sendmail]\nsocket = \"precious.key\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("sendmail socket"), "{said}");
    assert_eq!(
        std::fs::read_to_string(var.join("precious.key")).unwrap(),
        "secret"
    );
}
