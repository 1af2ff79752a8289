//! An attacker's session against the real binary: what a hostile client sends where a value
//! goes (CR LF decoded out of xtext, NUL, control characters, numbers past any limit, names no
//! Maildir can take, loops, password guessing, trickling) never reaches another protocol, a
//! log line or a file, and never gets a `250` that is failed later.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{config, free_port, have, queue_id_in, queued, RawClient, Server};

/// A next hop that offers PIPELINING and DSN, takes everything, and records every line it is
/// sent, commands and message alike.
struct RecordingHop {
    address: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl RecordingHop {
    fn start() -> RecordingHop {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&lines);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    let _ = out.write_all(b"220 hop.test ESMTP\r\n");
                    let mut in_data = false;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        seen.lock().unwrap().push(line.clone());
                        if in_data {
                            if line == ".\r\n" {
                                in_data = false;
                                let _ = out.write_all(b"250 2.0.0 taken\r\n");
                            }
                            continue;
                        }
                        let verb = line
                            .split([' ', ':', '\r'])
                            .next()
                            .unwrap_or("")
                            .to_ascii_uppercase();
                        let reply: &[u8] = match verb.as_str() {
                            "EHLO" => {
                                b"250-hop.test\r\n250-PIPELINING\r\n250-DSN\r\n250 8BITMIME\r\n"
                            }
                            "DATA" => {
                                in_data = true;
                                b"354 go on\r\n"
                            }
                            "QUIT" => {
                                let _ = out.write_all(b"221 bye\r\n");
                                return;
                            }
                            _ => b"250 2.0.0 ok\r\n",
                        };
                        let _ = out.write_all(reply);
                    }
                });
            }
        });
        RecordingHop { address, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits until the hop has seen a line containing `text`.
    fn wait_for(&self, text: &str, server: &Server) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let lines = self.lines();
            if lines.iter().any(|l| l.contains(text)) {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "the next hop never saw {text:?}: {lines:?}\n{}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A config whose `internal.test` is a relay domain routed to `hop`, delivering.
fn relaying_to(dir: &Path, hop: SocketAddr) -> String {
    config(dir, "relay_domains = [\"internal.test\"]")
        .replace("[delivery]\npaused = true", "[delivery]\npaused = false")
        + &format!(
            "\n[[route]]\ndomains = [\"internal.test\"]\nrelay = \"{hop}\"\nhost = \"hop.test\"\ntls = \"none\"\n"
        )
}

/// Sends one message on the mx listener with these RCPT lines; the replies, RCPT by RCPT,
/// then the final reply (or "" when no RCPT was taken).
fn send(server: &Server, rcpts: &[&str], body: &str) -> (Vec<String>, String) {
    let mut c = server.ready_for_rcpt();
    let replies: Vec<String> = rcpts.iter().map(|r| c.command(r)).collect();
    if !replies.iter().any(|r| r.starts_with("250")) {
        return (replies, String::new());
    }
    let data = c.command("DATA");
    assert!(data.starts_with("354"), "{data}");
    c.send(body.as_bytes());
    c.send(b"\r\n.\r\n");
    (replies, c.reply())
}

#[test]
fn orcpt_injection_never_reaches_the_next_hop() {
    let hop = RecordingHop::start();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &relaying_to(dir.path(), hop.address));
    let payload = "RCPT TO:<bob@internal.test> ORCPT=rfc822;rfc822+0D+0ARSET+0D+0AMAIL+20FROM:<ceo@bank.test>+0D+0ARCPT+20TO:<victim@elsewhere.test>+0D+0ADATA+0D+0ASubject:+20injected+0D+0A+0D+0Asmuggled+20body+0D+0A.+0D+0ANOOP;x";
    let (replies, _) = send(&server, &[payload], "");
    assert!(replies[0].starts_with("501 5.5.4"), "{replies:?}");

    // A well-formed ORCPT, and a quoted local part, travel intact and quoted once.
    let (replies, end) = send(
        &server,
        &[
            "RCPT TO:<bob@internal.test> NOTIFY=FAILURE ORCPT=rfc822;Bob+2Bold@Internal.test",
            "RCPT TO:<\"john doe\"@internal.test>",
        ],
        "Subject: fine\r\n\r\nfine",
    );
    assert!(replies.iter().all(|r| r.starts_with("250")), "{replies:?}");
    assert!(end.starts_with("250"), "{end}");
    let lines = hop.wait_for("Subject: fine", &server);
    let commands: Vec<&String> = lines
        .iter()
        .take_while(|l| !l.starts_with("Received:"))
        .collect();
    for forbidden in ["RSET", "victim@", "ceo@bank", "injected", "smuggled"] {
        assert!(
            !lines.iter().any(|l| l.contains(forbidden)),
            "{forbidden} reached the next hop: {lines:?}"
        );
    }
    assert!(
        commands.iter().any(|l| {
            l.as_str()
            == "RCPT TO:<bob@internal.test> NOTIFY=FAILURE ORCPT=rfc822;Bob+2Bold@Internal.test\r\n"
        }),
        "{commands:?}"
    );
    assert!(
        commands
            .iter()
            .any(|l| l.as_str() == "RCPT TO:<\"john doe\"@internal.test>\r\n"),
        "{commands:?}"
    );
    // Every command is one well-formed line.
    for line in &commands {
        assert!(line.ends_with("\r\n") && !line[..line.len() - 2].contains(['\r', '\n']));
    }
    server.stop();
}

#[test]
fn a_well_formed_orcpt_reaches_smtp_sink_intact() {
    if !have("smtp-sink", "a_well_formed_orcpt_reaches_smtp_sink_intact") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dumps = dir.path().join("dumps");
    std::fs::create_dir(&dumps).unwrap();
    // smtp-sink drops privileges to nobody when run as root: it must be able to write here.
    let _ = Command::new("chmod").arg("777").arg(&dumps).status();
    let port = free_port();
    let mut sink = Command::new("smtp-sink")
        .args(["-u", "nobody", "-d"])
        .arg(format!("{}/%M.", dumps.display()))
        .arg(format!("127.0.0.1:{port}"))
        .arg("10")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-sink");
    let hop: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(hop).is_err() {
        assert!(Instant::now() < deadline, "smtp-sink did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let server = Server::start(dir.path(), &relaying_to(dir.path(), hop));
    let (_, end) = send(
        &server,
        &["RCPT TO:<bob@internal.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Bold@Internal.test"],
        "Subject: orcpt\r\n\r\nx",
    );
    assert!(end.starts_with("250"), "{end}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let dump = loop {
        let found: Vec<String> = std::fs::read_dir(&dumps)
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        if let Some(d) = found.into_iter().find(|d| d.contains("Subject: orcpt")) {
            break d;
        }
        assert!(Instant::now() < deadline, "not relayed:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = sink.kill();
    let _ = sink.wait();
    assert!(
        dump.contains("X-Rcpt-Args: <bob@internal.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Bold@Internal.test"),
        "{dump}"
    );
    server.stop();
}

#[test]
fn a_line_break_in_a_login_name_cannot_forge_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &(config(dir.path(), "") + "\n[auth]\nallow_plaintext = true\n"),
    );
    let mut c = RawClient::connect(server.submission);
    c.reply();
    c.command("EHLO client.example.org");
    use base64::Engine;
    let forged = base64::engine::general_purpose::STANDARD
        .encode("\0alice\r\noutcome=Success user=root\0secret");
    let reply = c.command(&format!("AUTH PLAIN {forged}"));
    assert!(reply.starts_with("501"), "{reply}");
    c.command("QUIT");
    server.stop();
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    assert!(
        !log.lines()
            .any(|l| l.trim_start().starts_with("outcome=Success")),
        "{log}"
    );
}

#[test]
fn a_bidi_override_in_an_address_is_escaped_in_the_accepted_line() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example.org");
    // U+202E turns what follows it around on a terminal: `gpj.exe` reads as `exe.jpg`.
    let reply = c.command("MAIL FROM:<we\u{202e}ird@example.org> SMTPUTF8");
    assert!(reply.starts_with("250"), "{reply}");
    assert!(c.command("RCPT TO:<bob@example.test>").starts_with("250"));
    assert!(c.command("DATA").starts_with("354"));
    let reply = c.command("Subject: x\r\n\r\nx\r\n.");
    assert!(reply.starts_with("250"), "{reply}");
    c.command("QUIT");
    server.stop();
    let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap();
    let accepted = log
        .lines()
        .find(|l| l.contains(" accepted queue_id="))
        .expect("an accepted line");
    assert!(
        accepted.contains("from=<we\\u{202e}ird@example.org>"),
        "{accepted}"
    );
    assert!(
        !log.contains('\u{202e}'),
        "the raw character is in the log:\n{log}"
    );
}

#[test]
fn password_guessing_is_slowed_and_then_refused_across_connections() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &(config(dir.path(), "")
            // Failures count in fixed windows: one of 30 days is not crossed during the test.
            + "\n[auth]\nallow_plaintext = true\nmax_failures = 3\nmax_failure_delay = \"1s\"\nfailure_window = \"30d\"\n"),
    );
    let login = |password: &str| {
        let mut c = RawClient::connect(server.submission);
        c.reply();
        c.command("EHLO client.example.org");
        use base64::Engine;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0alice\0{password}"));
        let started = Instant::now();
        let reply = c.command(&format!("AUTH PLAIN {token}"));
        (reply, started.elapsed())
    };
    for _ in 0..3 {
        let (reply, took) = login("wrong");
        assert!(reply.starts_with("535"), "{reply}");
        // Each failure is answered after a delay.
        assert!(took >= Duration::from_millis(900), "{took:?}");
    }
    // Now even the right password is not checked: 454, at once.
    let (reply, _) = login("secret");
    assert!(reply.starts_with("454 4.7.0"), "{reply}");
    let (ok, metrics) = server.cli(&["metrics"]);
    assert!(ok, "{metrics}");
    assert!(metrics.contains("smtp_auth_failures_total 3"), "{metrics}");
    assert!(metrics.contains("smtp_auth_throttled_total 1"), "{metrics}");
    server.stop();
}

#[test]
fn a_trickling_client_is_timed_out_by_the_data_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &config(dir.path(), "data_timeout = \"2s\"\nmin_data_rate = 1000"),
    );
    let mut c = server.ready_for_rcpt();
    assert!(c.command("RCPT TO:<bob@example.test>").starts_with("250"));
    assert!(c.command("DATA").starts_with("354"));
    // One byte every 500 ms: each read comes well within the 2 s timeout, but the whole
    // DATA may take 2 s plus its size at 1000 octets a second.
    let mut writer = c.stream().try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        for _ in 0..20 {
            if writer.write_all(b"x").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let started = Instant::now();
    let reply = c.reply();
    assert!(reply.starts_with("421"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let _ = trickle.join();
    server.stop();
}

#[test]
fn idle_clients_near_the_connection_limit_get_a_short_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &config(
            dir.path(),
            "max_connections = 10\nmax_connections_per_ip = 10\nstress_timeout = \"1s\"",
        ),
    );
    let started = Instant::now();
    let mut idle: Vec<RawClient> = (0..8)
        .map(|_| {
            let mut c = RawClient::connect(server.mx);
            assert!(c.reply().starts_with("220"));
            c
        })
        .collect();
    // Eight of ten slots: each idle session, also those idle since before, is told 421 after
    // about a second, not 5 minutes.
    for c in &mut idle {
        let reply = c.reply();
        assert!(
            reply.starts_with("421"),
            "{reply:?} after {:?}\n{}",
            started.elapsed(),
            server.log()
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    server.stop();
}

#[test]
fn names_no_maildir_can_take_are_refused_at_rcpt_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let (replies, _) = send(
        &server,
        &[
            "RCPT TO:<a/b@example.test>",
            "RCPT TO:<\"../../tmp/x\"@example.test>",
        ],
        "",
    );
    for reply in &replies {
        assert!(reply.starts_with("550 5.1.3"), "{replies:?}");
    }
    assert!(queued(dir.path()).is_empty());
    server.stop();
}

#[test]
fn loops_are_refused_in_session_and_never_delivered_to_ourselves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The mx listener on a port chosen now, and a route that sends everything there: a loop.
    let port = free_port();
    let looping = config(d, "")
        .replace("[delivery]\npaused = true", "[delivery]\npaused = false")
        .replace(
            "name = \"mx\"\naddress = \"127.0.0.1:0\"",
            &format!("name = \"mx\"\naddress = \"127.0.0.1:{port}\""),
        )
        + &format!(
            "\n[[route]]\ndomains = [\"*\"]\nrelay = \"127.0.0.1:{port}\"\ntls = \"none\"\n"
        );
    let server = Server::start(d, &looping);

    // A message that has been around too often is refused before the 250.
    let mut hops = String::new();
    for n in 0..50 {
        hops.push_str(&format!("Received: from h{n} by h{}; x\r\n", n + 1));
    }
    let (_, end) = send(
        &server,
        &["RCPT TO:<bob@example.test>"],
        &(hops + "Subject: loop\r\n\r\nx"),
    );
    assert!(end.starts_with("554 5.4.6"), "{end}");

    // postmaster at our host name stays here: delivered to the local postmaster.
    let (replies, end) = send(
        &server,
        &["RCPT TO:<postmaster@mx.backstop.test>"],
        "Subject: pm\r\n\r\nx",
    );
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert!(end.starts_with("250"), "{end}");
    let delivered = server.local_mailbox("example.test/postmaster", 1);
    assert!(delivered[0].contains("Subject: pm"));

    // Mail from our own user to another domain would go to ourselves: never sent, and the
    // failure says why (a report to alice, who is ours).
    let transcript = server.submit_as_alice("alice@example.test", "x@elsewhere.example", &[]);
    let id = queue_id_in(&transcript);
    let reports = server.local_mailbox("example.test/alice", 1);
    assert!(
        reports[0].contains("loops back to myself"),
        "{}",
        reports[0]
    );
    assert!(
        server
            .cli(&["queue", "show", &id.to_string()])
            .1
            .contains("not found")
            || !server.log().contains("accepted into quarantine"),
        "{}",
        server.log()
    );
    server.stop();
}

#[test]
fn small_ones() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));

    // A BDAT size past any number: refused and closed, nothing queued.
    let mut c = server.ready_for_rcpt();
    assert!(c.command("RCPT TO:<bob@example.test>").starts_with("250"));
    let reply = c.command("BDAT 184467440737095516160 LAST");
    assert!(reply.starts_with("501 5.5.4"), "{reply}");
    assert_eq!(c.reply(), "");

    // SIZE past any number is too big, not zero.
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example.org");
    let reply = c.command("MAIL FROM:<a@example.org> SIZE=184467440737095516160");
    assert!(reply.starts_with("552 5.3.4"), "{reply}");

    // Not UTF-8 under SMTPUTF8: refused, not stored as U+FFFD.
    c.send(b"MAIL FROM:<j\xf6rg@example.org> SMTPUTF8\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("500 5.5.2"), "{reply}");

    // One over-long line, however it arrives, gets one reply.
    for _ in 0..6 {
        c.send(&[b'A'; 1000]);
        std::thread::sleep(Duration::from_millis(20));
    }
    c.send(b"\r\nNOOP\r\n");
    let first = c.reply();
    assert!(first.starts_with("500 5.5.2 Line too long"), "{first}");
    assert!(
        c.reply().starts_with("250"),
        "a second reply to the long line"
    );

    // NUL and control characters in EHLO: refused, never echoed.
    c.send(b"EHLO bad\0name\x1b[2J\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("501 5.5.2"), "{reply}");
    assert!(!reply.contains('\0') && !reply.contains('\x1b'));

    // What the server writes is its own: queue files and Maildir files are not readable by
    // other local users.
    let (_, end) = send(
        &server,
        &["RCPT TO:<bob@example.test>"],
        "Subject: x\r\n\r\nx",
    );
    assert!(end.starts_with("250"), "{end}");
    server.stop();
    use std::os::unix::fs::PermissionsExt;
    for entry in walk(&dir.path().join("var/queue")) {
        let mode = std::fs::metadata(&entry).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", entry.display());
    }
}

#[test]
fn maildir_delivery_never_follows_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let elsewhere = d.join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("new")).unwrap();
    let maildir = d.join("var/maildir/example.test");
    std::fs::create_dir_all(&maildir).unwrap();
    std::os::unix::fs::symlink(&elsewhere, maildir.join("bob")).unwrap();
    let server = Server::start(
        d,
        &config(d, "").replace("[delivery]\npaused = true", "[delivery]\npaused = false"),
    );
    let (_, end) = send(
        &server,
        &["RCPT TO:<bob@example.test>", "RCPT TO:<carol@example.test>"],
        "Subject: x\r\n\r\nx",
    );
    assert!(end.starts_with("250"), "{end}");
    let files = server.local_mailbox("example.test/carol", 1);
    assert_eq!(files.len(), 1);
    use std::os::unix::fs::PermissionsExt;
    let new = d.join("var/maildir/example.test/carol/new");
    for entry in std::fs::read_dir(&new).unwrap() {
        let mode = entry.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "a Maildir file of mode {mode:o}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("is a symlink") {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_dir(elsewhere.join("new")).unwrap().count(), 0);
    assert!(!elsewhere.join("tmp").exists());
    server.stop();
}

#[test]
fn a_token_file_others_can_read_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let token = d.join("token");
    std::fs::write(&token, "0123456789abcdef0123").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let path = d.join("backstop.toml");
    std::fs::write(
        &path,
        config(d, "")
            + &format!(
                "\n[admin]\nhttp = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
                token.display()
            ),
    )
    .unwrap();
    let out = Command::new(crate::harness::BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("chmod 600"), "{text}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(crate::harness::BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn forged_authentication_results_are_obscured() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let (_, end) = send(
        &server,
        &["RCPT TO:<bob@example.test>"],
        "Authentication-Results: mx.backstop.test; dmarc=pass header.from=bank.test\r\nSubject: x\r\n\r\nx",
    );
    assert!(end.starts_with("250"), "{end}");
    server.stop();
    let (_, _, body) = queued(dir.path()).pop().unwrap();
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("X-Removed-Auth-Results: mx.backstop.test; dmarc=pass"),
        "{text}"
    );
    assert!(
        !text.contains("Authentication-Results: mx.backstop.test"),
        "{text}"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
