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
        // Only what sending needs; no smtpd: this instance never receives.
        let master_cf = "pickup    unix n - n 60 1 pickup
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
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
tlsmgr    unix - - n 1000? 1 tlsmgr
";
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
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
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
