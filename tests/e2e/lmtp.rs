//! Delivery over LMTP to Debian's Dovecot, the primary-MX setup: one reply per recipient after
//! the data, so one recipient can be delivered while another fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{config, have, is_root, RawClient, Server};

/// A Dovecot serving LMTP on 127.0.0.1 for bob@ and full@example.com (full@ has a 1-byte quota,
/// so it fails after the data). Stopped when dropped.
pub struct Dovecot {
    child: Child,
    pub dir: PathBuf,
    pub port: u16,
}

impl Dovecot {
    pub fn start(dir: &Path) -> Dovecot {
        Dovecot::start_with(dir, false)
    }

    /// With `rcpt_check_quota`, LMTP answers RCPT for a full mailbox (`lmtp_rcpt_check_quota`,
    /// with the size MAIL announced). Its auth-client socket is `run/auth-client` either way.
    pub fn start_with(dir: &Path, rcpt_check_quota: bool) -> Dovecot {
        for d in ["run", "state", "mail"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let status = Command::new("chown")
            .arg("65534:65534")
            .arg(dir.join("mail"))
            .status()
            .unwrap();
        assert!(status.success());
        let d = dir.display();
        std::fs::write(
            dir.join("users"),
            format!(
                "bob@example.com:{{PLAIN}}secret:65534:65534::{d}/mail/example.com/bob::\n\
                 full@example.com:{{PLAIN}}secret:65534:65534::{d}/mail/example.com/full::userdb_quota_rule=*:storage=1B\n"
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let quota = if rcpt_check_quota { "yes" } else { "no" };
        std::fs::write(
            dir.join("dovecot.conf"),
            format!(
                "base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
first_valid_uid = 100
mail_location = maildir:~/Maildir
mail_plugins = quota
plugin {{
  quota = maildir:User quota
}}
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
  unix_listener lmtp {{
    mode = 0600
  }}
}}
protocol lmtp {{
  mail_plugins = $mail_plugins quota
  lmtp_rcpt_check_quota = {quota}
}}
service auth {{
  unix_listener auth-client {{
    mode = 0600
  }}
}}
"
            ),
        )
        .unwrap();
        let child = Command::new("dovecot")
            .args(["-F", "-c"])
            .arg(dir.join("dovecot.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dovecot");
        let mut up = false;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            up,
            "dovecot did not start: {}",
            std::fs::read_to_string(dir.join("dovecot.log")).unwrap_or_default()
        );
        Dovecot {
            child,
            dir: dir.to_owned(),
            port,
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM: the master stops its service processes.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

#[test]
fn an_mx_hands_mail_to_dovecot_over_lmtp() {
    hand_mail_to_dovecot("an_mx_hands_mail_to_dovecot_over_lmtp", |dovecot| {
        format!("127.0.0.1:{}", dovecot.port)
    });
}

#[test]
fn an_mx_hands_mail_to_dovecot_over_a_unix_socket() {
    hand_mail_to_dovecot(
        "an_mx_hands_mail_to_dovecot_over_a_unix_socket",
        |dovecot| format!("unix:{}", dovecot.dir.join("run/lmtp").display()),
    );
}

/// Sends to bob@ and full@example.com through backstop to Dovecot at `relay(dovecot)`.
fn hand_mail_to_dovecot(test: &str, relay: fn(&Dovecot) -> String) {
    if !have("dovecot", test) || !is_root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dovecot = Dovecot::start(&d.join("dovecot"));
    // The primary MX of example.com (etc/mx.toml's shape): a local domain, its recipients in
    // a table, its mailboxes in Dovecot, reached by a route that names it.
    let table = d.join("recipients");
    std::fs::write(&table, "bob@example.com\nfull@example.com\n").unwrap();
    let config = config(d, "")
        .replace(
            "local_domains = [\"example.test\"]",
            "local_domains = [\"example.test\", \"example.com\"]",
        )
        .replace("[delivery]\npaused = true", "[delivery]\npaused = false")
        + &format!(
            "\n[recipients]\ntable = \"{}\"\n\n[[route]]\ndomains = [\"example.com\"]\nrelay = \"{}\"\nprotocol = \"lmtp\"\n",
            table.display(),
            relay(&dovecot)
        );
    let server = Server::start(d, &config);
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    assert!(c
        .command("MAIL FROM:<sender@example.org>")
        .starts_with("250"));
    assert!(c
        .command("RCPT TO:<nobody@example.com>")
        .starts_with("550 5.1.1"));
    assert!(c.command("RCPT TO:<bob@example.com>").starts_with("250"));
    assert!(c.command("RCPT TO:<full@example.com>").starts_with("250"));
    assert!(c.command("DATA").starts_with("354"));
    c.send(b"Subject: over lmtp\r\n\r\nhello dovecot\r\n.\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let id = crate::harness::queue_id_in(&reply);
    c.command("QUIT");

    // bob gets it; full@ is over quota, which LMTP reports for that recipient alone.
    let new = dovecot.dir.join("mail/example.com/bob/Maildir/new");
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivered = loop {
        if let Some(Ok(entry)) = std::fs::read_dir(&new).ok().and_then(|mut r| r.next()) {
            break std::fs::read_to_string(entry.path()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "not delivered; backstop:\n{}\ndovecot:\n{}",
            server.log(),
            std::fs::read_to_string(dovecot.dir.join("dovecot.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(delivered.contains("Subject: over lmtp"), "{delivered}");
    // Dovecot writes the file before it answers; backstop logs the delivery after the answer.
    let logged = |log: &str| {
        log.contains(&format!("relay=localhost[{}]", relay(&dovecot)))
            || log.contains(&format!("relay=127.0.0.1[{}]", relay(&dovecot)))
    };
    while !logged(&server.log()) {
        assert!(Instant::now() < deadline, "{}", server.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // full@ failed after the message was accepted, and the sender may be forged: no report,
    // the message waits in quarantine with the reason.
    let reason = server.quarantined(id);
    assert!(reason.contains("full@example.com: 552"), "{reason}");
    assert!(!reason.contains("bob@"), "{reason}");
    server.stop();
}

/// The mailbox state at RCPT, without a table or a directory: callahead over LMTP asks Dovecot
/// about each recipient of the local domain while the client waits. An unknown user and a full
/// mailbox are refused with Dovecot's own replies; nothing lands in quarantine.
#[test]
fn unknown_and_full_mailboxes_are_refused_at_rcpt() {
    let test = "unknown_and_full_mailboxes_are_refused_at_rcpt";
    if !have("dovecot", test) || !is_root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dovecot = Dovecot::start_with(&d.join("dovecot"), true);
    // full@ is over its 1-byte quota already: one message waits in its mailbox.
    let maildir = dovecot.dir.join("mail/example.com/full/Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    std::fs::write(
        maildir.join("cur/1700000000.M1P1.test:2,S"),
        "Subject: old\r\n\r\nfills the mailbox\r\n",
    )
    .unwrap();
    let status = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(dovecot.dir.join("mail"))
        .status()
        .unwrap();
    assert!(status.success());
    let text = config(d, "")
        .replace(
            "local_domains = [\"example.test\"]",
            "local_domains = [\"example.test\", \"example.com\"]",
        )
        .replace("[delivery]\npaused = true", "[delivery]\npaused = false")
        + &format!(
            "\n[[route]]\ndomains = [\"example.com\"]\nrelay = \"127.0.0.1:{}\"\nprotocol = \"lmtp\"\ncallahead = true\n",
            dovecot.port
        );
    let server = Server::start(d, &text);
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example.org");
    assert!(c
        .command("MAIL FROM:<someone@example.org> SIZE=2000")
        .starts_with("250"));
    let unknown = c.command("RCPT TO:<nobody@example.com>");
    assert!(unknown.starts_with("550 5.1.1"), "{unknown}");
    let full = c.command("RCPT TO:<full@example.com>");
    assert!(
        full.starts_with("552 5.2.2") || full.starts_with("452 4.2.2"),
        "{full}"
    );
    // Asked once: the second answer comes from the cache.
    assert!(c
        .command("RCPT TO:<nobody@example.com>")
        .starts_with("550 5.1.1"));
    assert!(c.command("RCPT TO:<bob@example.com>").starts_with("250"));
    assert!(c.command("DATA").starts_with("354"));
    c.send(b"Subject: checked at rcpt\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.command("QUIT");
    let new = dovecot.dir.join("mail/example.com/bob/Maildir/new");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&new).map_or(0, |r| r.count()) == 0 {
        assert!(
            Instant::now() < deadline,
            "not delivered:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (ok, listed) = server.cli(&["quarantine", "list"]);
    assert!(ok, "{listed}");
    assert!(!listed.contains("@example.com"), "{listed}");
    let log = server.log();
    assert_eq!(
        log.matches("callahead: the next hop refuses the recipient")
            .count(),
        2,
        "{log}"
    );
    server.stop();
}

/// AUTH through Dovecot's auth-client socket: Dovecot decides, and when it is gone the client
/// hears 454 (try again), never a login.
#[test]
fn auth_through_dovecots_socket() {
    let test = "auth_through_dovecots_socket";
    if !have("dovecot", test) || !is_root(test) || !have("swaks", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dovecot = Dovecot::start(&d.join("dovecot"));
    let socket = dovecot.dir.join("run/auth-client");
    let text = config(d, "") + &format!("\n[auth]\ndovecot = \"unix:{}\"\n", socket.display());
    let server = Server::start(d, &text);
    let login = |password: &str| {
        let out = Command::new("swaks")
            .args(["--server", &server.submission.to_string(), "--tls"])
            .args(["--auth", "PLAIN", "--auth-user", "bob@example.com"])
            .args(["--auth-password", password, "--quit-after", "AUTH"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(login("secret").contains("<~  235"), "{}", login("secret"));
    let wrong = login("wrong");
    assert!(wrong.contains("<~* 535"), "{wrong}");
    drop(dovecot);
    let gone = login("secret");
    assert!(gone.contains("<~* 454"), "{gone}");
    server.stop();
}
