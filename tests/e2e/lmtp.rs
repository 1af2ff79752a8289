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
  lmtp_rcpt_check_quota = no
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
    assert!(
        server
            .log()
            .contains(&format!("relay=\"localhost[{}]\"", relay(&dovecot)))
            || server
                .log()
                .contains(&format!("relay=\"127.0.0.1[{}]\"", relay(&dovecot))),
        "{}",
        server.log()
    );
    // full@ failed after the message was accepted, and the sender may be forged: no report,
    // the message waits in quarantine with the reason.
    let reason = server.quarantined(id);
    assert!(reason.contains("full@example.com: 552"), "{reason}");
    assert!(!reason.contains("bob@"), "{reason}");
    server.stop();
}
