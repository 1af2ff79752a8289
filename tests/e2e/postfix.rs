//! Debian's Postfix as a sending MTA relays a message into backstop.
//!
//! A throw-away Postfix instance (own config, queue and log under a temporary directory) gets
//! `relayhost = [127.0.0.1]:<backstop's mx port>`; a message handed to its `sendmail` must
//! arrive in backstop's queue, over STARTTLS, with Postfix's own Received: header below ours.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{config, have, is_root, queued, Server};

/// A Postfix instance that only sends. Stopped when dropped.
struct Postfix {
    conf: PathBuf,
    dir: PathBuf,
}

impl Postfix {
    fn start(dir: &Path, relay: std::net::SocketAddr) -> Postfix {
        let conf = dir.join("etc");
        for d in ["etc", "spool", "data"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        run(
            "chown",
            &["postfix", &dir.join("data").display().to_string()],
        );
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/data
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = client.postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
relayhost = [{ip}]:{port}
smtp_tls_security_level = may
smtp_tls_loglevel = 1
alias_maps =
alias_database =
local_transport = error:5.1.1 no local delivery here
",
            dir = dir.display(),
            ip = relay.ip(),
            port = relay.port()
        );
        std::fs::write(conf.join("main.cf"), main_cf).unwrap();
        // No smtpd: this instance never receives.
        let master_cf = master_cf(None);
        std::fs::write(conf.join("master.cf"), master_cf).unwrap();
        let conf_arg = conf.display().to_string();
        run("postfix", &["-c", &conf_arg, "check"]);
        run("postfix", &["-c", &conf_arg, "start"]);
        Postfix {
            conf,
            dir: dir.to_owned(),
        }
    }

    fn sendmail(&self, from: &str, to: &str, message: &str) {
        use std::io::Write;
        let mut child = Command::new("/usr/sbin/sendmail")
            .arg("-C")
            .arg(&self.conf)
            .args(["-f", from, to])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(message.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "sendmail failed");
    }

    fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        stop(&self.conf);
    }
}

/// Stops the Postfix instance whose config is in `conf` (it needs the config to be there).
fn stop(conf: &Path) {
    let _ = Command::new("postfix")
        .arg("-c")
        .arg(conf)
        .arg("stop")
        .status();
}

/// Postfix's services for a throw-away instance; with a port, an smtpd on 127.0.0.2 too.
fn master_cf(smtpd_port: Option<u16>) -> String {
    let smtpd = smtpd_port.map_or(String::new(), |port| {
        format!("127.0.0.2:{port} inet n - n - - smtpd\n")
    });
    smtpd
        + "pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
virtual   unix - n n - - virtual
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
tlsmgr    unix - - n 1000? 1 tlsmgr
"
}

pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn postfix_relays_a_message_into_backstop() {
    let test = "postfix_relays_a_message_into_backstop";
    if !have("/usr/sbin/postfix", test) || !is_root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let postfix = Postfix::start(&dir.path().join("postfix"), server.mx);
    postfix.sendmail(
        "sender@postfix.test",
        "user@example.test",
        "From: sender@postfix.test\nTo: user@example.test\nSubject: relayed by postfix\n\nhello from postfix\n",
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let messages = loop {
        let messages = queued(dir.path());
        if !messages.is_empty() {
            break messages;
        }
        assert!(
            Instant::now() < deadline,
            "no message arrived from postfix; its log:\n{}\nbackstop's log:\n{}",
            postfix.maillog(),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(postfix);
    server.stop();

    assert_eq!(messages.len(), 1);
    let (_, envelope, body) = &messages[0];
    assert_eq!(envelope.sender.to_string(), "<sender@postfix.test>");
    assert_eq!(
        envelope.recipients[0].address.to_string(),
        "user@example.test"
    );
    assert_eq!(envelope.client.helo, "client.postfix.test");
    assert!(
        envelope.client.tls.is_some(),
        "postfix should have used STARTTLS"
    );
    let body = String::from_utf8_lossy(body);
    let ours = body
        .find("by mx.backstop.test (backstop) with ESMTPS")
        .expect(&body);
    let theirs = body.find("by client.postfix.test (Postfix").expect(&body);
    assert!(ours < theirs, "our Received: must be on top:\n{body}");
    assert!(body.contains("Subject: relayed by postfix\r\n"), "{body}");
    assert!(body.contains("\r\n\r\nhello from postfix\r\n"), "{body}");
}

/// A Postfix instance that receives for `example.net`, `implicit.example` and `ipv6.example`
/// (bob only) on 127.0.0.2 and ::1, with STARTTLS under a certificate for `peer-mx.example.net` and
/// `mx1.example.net` signed by a test CA (`ca`). Stopped when dropped.
pub struct PostfixMx {
    conf: PathBuf,
    pub dir: PathBuf,
    pub port: u16,
    /// The CA that signed its certificate, PEM.
    pub ca: PathBuf,
}

impl PostfixMx {
    pub fn start(dir: &Path) -> PostfixMx {
        let conf = dir.join("etc");
        for d in ["etc", "spool", "data", "mail"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        run(
            "chown",
            &["postfix", &dir.join("data").display().to_string()],
        );
        run(
            "chown",
            &["nobody:nogroup", &dir.join("mail").display().to_string()],
        );
        let port = std::net::TcpListener::bind("127.0.0.2:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (ca, cert, key) = test_certificate(dir, "DNS:peer-mx.example.net,DNS:mx1.example.net");
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {dir}/spool
data_directory = {dir}/data
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
myhostname = peer-mx.example.net
mydomain = example.net
mydestination =
inet_interfaces = loopback-only
inet_protocols = all
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_recipient_restrictions = reject_unlisted_recipient
alias_maps =
alias_database =
local_transport = error:5.1.1 no local delivery here
default_transport = error:5.7.1 this peer does not relay
relay_domains =
virtual_mailbox_domains = example.net, implicit.example, ipv6.example
virtual_mailbox_base = {dir}/mail
virtual_mailbox_maps = inline:{{ bob@example.net=example.net/bob/, bob@implicit.example=implicit.example/bob/, bob@ipv6.example=ipv6.example/bob/ }}
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_security_level = may
smtpd_tls_received_header = yes
smtpd_forbid_bare_newline = yes
smtpd_forbid_bare_newline_exclusions =
",
            dir = dir.display(),
            cert = cert.display(),
            key = key.display(),
        );
        std::fs::write(conf.join("main.cf"), main_cf).unwrap();
        // Also on ::1, for delivery over IPv6.
        let master_cf = master_cf(Some(port)) + &format!("[::1]:{port} inet n - n - - smtpd\n");
        std::fs::write(conf.join("master.cf"), master_cf).unwrap();
        let conf_arg = conf.display().to_string();
        run("postfix", &["-c", &conf_arg, "check"]);
        run("postfix", &["-c", &conf_arg, "start"]);
        // Wait for its greeting.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.2", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        PostfixMx {
            conf,
            dir: dir.to_owned(),
            port,
            ca,
        }
    }

    /// Changes main.cf settings (`name = value` lines) and reloads.
    pub fn reconfigure(&self, settings: &[&str]) {
        let conf_arg = self.conf.display().to_string();
        for setting in settings {
            run("postconf", &["-c", &conf_arg, "-e", setting]);
        }
        run("postfix", &["-c", &conf_arg, "reload"]);
        // The running smtpd processes finish their sessions on the old settings; new ones
        // start with the new.
        std::thread::sleep(Duration::from_millis(500));
    }

    /// The messages in a mailbox, e.g. `example.net/bob`.
    pub fn mailbox(&self, mailbox: &str) -> Vec<String> {
        let new = self.dir.join("mail").join(mailbox).join("new");
        let mut messages: Vec<String> = std::fs::read_dir(new)
            .map(|r| {
                r.filter_map(Result::ok)
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        messages.sort();
        messages
    }

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for PostfixMx {
    fn drop(&mut self) {
        stop(&self.conf);
    }
}

/// A test CA and a certificate it signed for `names` (a subjectAltName value such as
/// `DNS:mx1.example.net,IP:127.0.0.1`): (ca, cert, key), PEM files in `dir`.
pub fn test_certificate(dir: &Path, names: &str) -> (PathBuf, PathBuf, PathBuf) {
    let path = |name: &str| dir.join(name).display().to_string();
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=backstop test CA",
            "-keyout",
            &path("ca.key"),
            "-out",
            &path("ca.pem"),
        ],
    );
    run(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=backstop test peer",
            "-addext",
            &format!("subjectAltName={names}"),
            "-keyout",
            &path("key.pem"),
            "-out",
            &path("cert.csr"),
        ],
    );
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &path("cert.csr"),
            "-CA",
            &path("ca.pem"),
            "-CAkey",
            &path("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
            "-out",
            &path("cert.pem"),
        ],
    );
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

#[test]
fn backstop_relays_to_postfix_over_starttls() {
    let test = "backstop_relays_to_postfix_over_starttls";
    if !have("/usr/sbin/postfix", test) || !have("swaks", test) || !is_root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mx = PostfixMx::start(&d.join("postfix"));
    let config = config(d, "").replace("[delivery]\npaused = true", "[delivery]\npaused = false")
        + &format!(
            "\n[[route]]\ndomains = [\"example.net\"]\nrelay = \"127.0.0.2:{}\"\nhost = \"peer-mx.example.net\"\n",
            mx.port
        );
    let server = Server::start(d, &config);
    let transcript = server.submit_as_alice(
        "alice@example.test",
        "bob@example.net,nobody@example.net",
        &["--header", "Subject: relayed to postfix"],
    );
    assert!(
        transcript.contains("250 2.0.0 Ok: queued as "),
        "{transcript}"
    );
    crate::harness::queue_id_in(&transcript);

    // bob's copy lands in Postfix's mailbox, received over TLS.
    let new = mx.dir.join("mail/example.net/bob/new");
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        if let Some(Ok(entry)) = std::fs::read_dir(&new).ok().and_then(|mut r| r.next()) {
            break std::fs::read_to_string(entry.path()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "not delivered to postfix; backstop:\n{}\npostfix:\n{}",
            server.log(),
            std::fs::read_to_string(mx.dir.join("maillog")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        delivered.contains("Subject: relayed to postfix"),
        "{delivered}"
    );
    assert!(
        delivered.contains("by peer-mx.example.net (Postfix) with ESMTPS"),
        "{delivered}"
    );
    assert!(
        delivered.contains("by mx.backstop.test (backstop) with ESMTPSA"),
        "{delivered}"
    );

    // nobody@ was refused by Postfix with 550: alice logged in to send, so she gets a report.
    let report = &server.local_mailbox("example.test/alice", 1)[0];
    assert!(
        report.contains(
            "Final-Recipient: rfc822; nobody@example.net\r\nAction: failed\r\nStatus: 5.1.1"
        ),
        "{report}"
    );
    server.stop();
}
