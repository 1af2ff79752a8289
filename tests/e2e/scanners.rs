//! The content scanners against the real programs from Debian, each on loopback or a Unix
//! socket of the test's own: clamd (INSTREAM, a signature database the test writes),
//! rspamd (/checkv2, with its GTUBE test patterns), OpenDKIM as a milter in verify mode, and
//! a milter written with pymilter (libmilter) that uses every modification. Each: a clean
//! message is accepted, a bad one refused with the scanner's reason, and once the scanner is
//! stopped the client gets 451 4.7.1, never an unchecked accept.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::dns::{zone, Knot};
use crate::harness::{config, free_port, have, is_root, queue_id_in, queued, RawClient, Server};
use crate::mx::dkim_key;
use crate::sender_auth::{message, txt};

/// A scanner (or other peer) process, stopped (SIGTERM, then SIGKILL) when dropped.
pub(crate) struct Peer {
    child: Child,
    name: &'static str,
}

impl Peer {
    pub(crate) fn spawn(name: &'static str, command: &mut Command, log: &Path) -> Peer {
        let log = std::fs::File::create(log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Peer { child, name }
    }

    /// Waits until `ready` says so, or fails the test with `log`.
    pub(crate) fn wait(self, log: &Path, ready: impl Fn() -> bool) -> Peer {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready() {
            assert!(
                Instant::now() < deadline,
                "{} did not start:\n{}",
                self.name,
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn listening(port: u16) -> impl Fn() -> bool {
    move || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Sends `message` from sender@example.org to user@example.test; the reply to the data.
fn send(server: &Server, message: &str) -> String {
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example.org");
    let mail = c.command("MAIL FROM:<sender@example.org>");
    assert!(mail.starts_with("250"), "{mail}");
    let rcpt = c.command("RCPT TO:<user@example.test>");
    assert!(rcpt.starts_with("250"), "{rcpt}");
    assert!(c.command("DATA").starts_with("354"));
    c.send(message.as_bytes());
    c.send(b".\r\n");
    let reply = c.reply();
    c.command("QUIT");
    reply.trim_end().to_owned()
}

fn plain(subject: &str, body: &str) -> String {
    format!(
        "From: sender@example.org\r\nTo: user@example.test\r\nSubject: {subject}\r\n\
         Date: Sun, 22 Nov 2026 20:00:00 +0000\r\n\r\n{body}\r\n"
    )
}

/// The body the queue holds for `reply`'s queue id.
fn stored(d: &Path, reply: &str) -> String {
    let id = queue_id_in(reply);
    let (_, _, body) = queued(d)
        .into_iter()
        .find(|(i, _, _)| *i == id)
        .unwrap_or_else(|| panic!("{id} is not queued"));
    String::from_utf8_lossy(&body).into_owned()
}

const UNAVAILABLE: &str = "451 4.7.1 Content check unavailable, try again later";

#[test]
fn clamd_refuses_a_virus_and_names_it() {
    let test = "clamd_refuses_a_virus_and_names_it";
    if !have("clamd", test) || !is_root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // No signature download here: a database of one signature, the EICAR test file's MD5.
    let eicar = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    let db = d.join("clamav");
    std::fs::create_dir_all(&db).unwrap();
    let md5 = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(eicar)?;
            c.wait_with_output()
        })
        .unwrap();
    let md5 = String::from_utf8_lossy(&md5.stdout)[..32].to_owned();
    std::fs::write(
        db.join("backstop-test.hdb"),
        format!("{md5}:{}:Backstop-Test-Eicar\n", eicar.len()),
    )
    .unwrap();
    let socket = d.join("clamd.sock");
    let conf = d.join("clamd.conf");
    std::fs::write(
        &conf,
        format!(
            "LocalSocket {}\nDatabaseDirectory {}\nForeground yes\nUser root\nLogFile {}\n",
            socket.display(),
            db.display(),
            d.join("clamd.log").display()
        ),
    )
    .unwrap();
    let log = d.join("clamd.out");
    let clamd = Peer::spawn("clamd", Command::new("clamd").arg("-c").arg(&conf), &log)
        .wait(&log, || socket.exists());
    let server = Server::start(
        d,
        &(config(d, "")
            + &format!(
                "\n[[filter]]\ntype = \"clamd\"\naddress = \"unix:{}\"\n",
                socket.display()
            )),
    );
    let infected = format!(
        "From: sender@example.org\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
         --b\r\nContent-Type: application/octet-stream; name=\"invoice.com\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        base64(eicar)
    );
    assert_eq!(
        send(&server, &infected),
        "554 5.7.0 Message contains a virus (Backstop-Test-Eicar.UNOFFICIAL)"
    );
    let clean = send(&server, &plain("hello", "nothing to see"));
    assert!(clean.starts_with("250 2.0.0 Ok: queued as"), "{clean}");
    // clamd stopped: 451, and the message is not taken.
    drop(clamd);
    assert_eq!(send(&server, &plain("later", "again")), UNAVAILABLE);
    // Both counted as clamd's decisions.
    let (_, metrics) = server.cli(&["metrics"]);
    for line in [
        "smtp_rejections_total{stage=\"data\",check=\"clamd\",code=\"5.7.0\"} 1\n",
        "smtp_rejections_total{stage=\"data\",check=\"clamd\",code=\"4.7.1\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
    let messages = queued(d);
    server.stop();
    assert_eq!(messages.len(), 1);

    // A message too large to read into memory (past max_scan_size, spooled past the
    // threshold) is streamed to clamd from its file: the virus at its end is found. A rule,
    // which needs the message whole, is skipped for it, and the message says so.
    let clamd = Peer::spawn("clamd", Command::new("clamd").arg("-c").arg(&conf), &log)
        .wait(&log, || socket.exists());
    let server = Server::start(
        d,
        &(config(d, "spool_threshold = \"64K\"")
            + &format!(
                "\n[content]\nmax_scan_size = \"100K\"\n\n[[filter]]\ntype = \"header\"\nheader = \"Subject\"\npattern = \"(?i)invoice\"\naction = \"reject\"\n\n[[filter]]\ntype = \"clamd\"\naddress = \"unix:{}\"\n",
                socket.display()
            )),
    );
    let padding = format!("{}\r\n", "p".repeat(76)).repeat(5000);
    let large_infected =
        infected.replace("see attached\r\n", &format!("see attached\r\n{padding}"));
    assert!(large_infected.len() > 300_000);
    assert_eq!(
        send(&server, &large_infected),
        "554 5.7.0 Message contains a virus (Backstop-Test-Eicar.UNOFFICIAL)"
    );
    let large_clean = plain("invoice", &padding);
    let reply = send(&server, &large_clean);
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply}");
    let body = stored(d, &reply);
    assert!(
        body.starts_with("Authentication-Results: mx.backstop.test; none (message of "),
        "{}",
        &body[..300]
    );
    assert!(body.ends_with(&large_clean), "the message, whole");
    assert!(server
        .log()
        .contains("content check skipped: the message is larger than max_scan_size"));
    // A small one still gets every check.
    let small = send(&server, &plain("invoice", "small"));
    assert!(small.starts_with("5"), "{small}");
    server.stop();

    // A hold a recipient may lift never carries a virus: a message the RFC 5322 check or a
    // rule before clamd would quarantine is still scanned, and the virus decides.
    let server = Server::start(
        d,
        &(config(d, "")
            + &format!(
                r#"
[content]
rfc5322 = "quarantine"

[[filter]]
type = "header"
header = "Subject"
pattern = "(?i)invoice"
action = "quarantine"

[[filter]]
type = "clamd"
address = "unix:{}"
"#,
                socket.display()
            )),
    );
    // No Date: the RFC 5322 check would hold it.
    assert_eq!(
        send(&server, &infected),
        "554 5.7.0 Message contains a virus (Backstop-Test-Eicar.UNOFFICIAL)"
    );
    // With a Date, the rule would.
    let dated = infected.replacen(
        "Subject: invoice\r\n",
        "Subject: invoice\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n",
        1,
    );
    assert_eq!(
        send(&server, &dated),
        "554 5.7.0 Message contains a virus (Backstop-Test-Eicar.UNOFFICIAL)"
    );
    // A clean one the rule holds is held.
    let held = send(
        &server,
        "From: sender@example.org\r\nSubject: invoice\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n\r\nclean\r\n",
    );
    assert!(held.starts_with("250 2.0.0 Ok: queued as"), "{held}");
    let reason = server.quarantined(crate::harness::queue_id_in(&held));
    assert!(
        reason.contains("Subject matches"),
        "the rule's hold: {reason}"
    );
    server.stop();
    drop(clamd);
}

/// Standard base64 of `data`, in lines of 76.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out.as_bytes()
        .chunks(76)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// rspamd's test patterns (its `enable_test_patterns`): X is reject, Y add header, Z
/// rewrite subject.
fn gtube(letter: char) -> String {
    format!("{letter}JS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X")
}

#[test]
fn rspamd_actions_decide_in_session() {
    let test = "rspamd_actions_decide_in_session";
    if !have("rspamd", test) || !is_root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = d.join("rspamd");
    std::fs::create_dir_all(&run).unwrap();
    let port = free_port();
    // rspamd's own config, minimal: no network lookups (DNS goes to a port nobody listens
    // on), one worker on loopback.
    let conf = run.join("rspamd.conf");
    std::fs::write(
        &conf,
        format!(
            "options {{\n  pidfile = \"{run}/rspamd.pid\";\n  enable_test_patterns = true;\n  \
             dns {{ nameserver = [\"127.0.0.1:9\"]; timeout = 0.2s; retransmits = 1; }}\n}}\n\
             logging {{ type = \"file\"; filename = \"{run}/rspamd.log\"; level = \"info\"; }}\n\
             worker \"normal\" {{ bind_socket = \"127.0.0.1:{port}\"; count = 1; }}\n\
             actions {{ reject = 15; \"add header\" = 6; }}\n",
            run = run.display()
        ),
    )
    .unwrap();
    let vars: Vec<String> = ["DBDIR", "RUNDIR", "LOGDIR"]
        .iter()
        .map(|v| format!("{v}={}", run.display()))
        .collect();
    let log = d.join("rspamd.out");
    let mut command = Command::new("rspamd");
    command
        .args(["-f", "-i", "-u", "root", "-g", "root", "-c"])
        .arg(&conf);
    for var in &vars {
        command.args(["--var", var]);
    }
    let rspamd = Peer::spawn("rspamd", &mut command, &log).wait(&log, listening(port));
    let server = Server::start(
        d,
        &(config(d, "")
            + &format!("\n[[filter]]\ntype = \"rspamd\"\naddress = \"127.0.0.1:{port}\"\n")),
    );
    assert_eq!(
        send(&server, &plain("buy", &gtube('X'))),
        "550 5.7.1 Gtube pattern"
    );
    let marked = send(&server, &plain("maybe", &gtube('Y')));
    let rewritten = send(&server, &plain("offer", &gtube('Z')));
    let clean = send(&server, &plain("hello", "nothing to see"));
    drop(rspamd);
    assert_eq!(send(&server, &plain("later", "again")), UNAVAILABLE);
    let marked = stored(d, &marked);
    assert!(
        marked.contains("X-Spam: Yes\r\n") && marked.contains("X-Rspamd-Action: add header\r\n"),
        "{marked}"
    );
    let rewritten = stored(d, &rewritten);
    assert!(
        rewritten.contains("Subject: *** SPAM *** offer\r\n")
            && !rewritten.contains("Subject: offer"),
        "{rewritten}"
    );
    let clean = stored(d, &clean);
    assert!(
        clean.contains("X-Rspamd-Score: 0.00 / 15.00\r\nX-Rspamd-Action: no action\r\n"),
        "{clean}"
    );
    assert_eq!(queued(d).len(), 3);
    server.stop();
}

#[test]
fn opendkim_as_a_milter_verifies_and_rejects_a_broken_signature() {
    let test = "opendkim_as_a_milter_verifies_and_rejects_a_broken_signature";
    if !have("opendkim", test) || !have("knotd", test) || !is_root(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, record) = dkim_key(d, "s1", "rsa");
    let zones = [(
        "good.example",
        zone(
            "good.example",
            &format!("s1._domainkey IN TXT {}", txt(&record)),
        ),
    )];
    let zone_refs: Vec<(&str, &str)> = zones.iter().map(|(o, z)| (*o, z.as_str())).collect();
    let knot = Knot::start(&d.join("knot"), &zone_refs);
    // OpenDKIM resolves through libunbound, told to ask Knot for everything.
    let unbound = d.join("unbound.conf");
    std::fs::write(
        &unbound,
        format!(
            "server:\n  do-not-query-localhost: no\n  module-config: \"iterator\"\n\
             forward-zone:\n  name: \".\"\n  forward-addr: {}@{}\n",
            knot.address.ip(),
            knot.address.port()
        ),
    )
    .unwrap();
    let port = free_port();
    let conf = d.join("opendkim.conf");
    std::fs::write(
        &conf,
        format!(
            "Mode v\nSocket inet:{port}@127.0.0.1\nAuthservID mx.backstop.test\n\
             AlwaysAddARHeader yes\nOn-BadSignature reject\nSyslog no\nPidFile {}\n\
             ResolverConfiguration {}\n",
            d.join("opendkim.pid").display(),
            unbound.display()
        ),
    )
    .unwrap();
    let log = d.join("opendkim.out");
    let opendkim = Peer::spawn(
        "opendkim",
        Command::new("opendkim").args(["-f", "-x"]).arg(&conf),
        &log,
    )
    .wait(&log, listening(port));
    let server = Server::start(
        d,
        &(config(d, "")
            + &format!("\n[[filter]]\ntype = \"milter\"\naddress = \"inet:127.0.0.1:{port}\"\n")),
    );
    let signed = message(d, "a@good.example", "signed", Some((&key, "good.example")));
    let good = send(&server, &signed);
    assert!(
        good.starts_with("250 2.0.0 Ok: queued as"),
        "{good}\n{}\n{}",
        server.log(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let broken = send(&server, &signed.replace("hello", "HELLO"));
    assert_eq!(broken, "550 5.7.0 bad DKIM signature data");
    drop(opendkim);
    assert_eq!(send(&server, &signed), UNAVAILABLE);
    let good = stored(d, &good);
    assert!(
        good.contains("Authentication-Results: mx.backstop.test;")
            && good.contains("dkim=pass")
            && good.contains("header.d=good.example"),
        "{good}"
    );
    assert_eq!(queued(d).len(), 1);
    server.stop();
}

/// A milter on libmilter (pymilter) that acts on the subject: reject, tempfail,
/// quarantine, discard, or change everything it may.
const TEST_MILTER: &str = r#"
import sys, Milter

class TestMilter(Milter.Base):
    def __init__(self):
        self.subject = ""

    def header(self, name, value):
        if name.lower() == "subject":
            self.subject = value
        return Milter.CONTINUE

    def eom(self):
        s = self.subject
        if "reject me" in s:
            self.setreply("550", "5.7.1", "Rejected by the test milter")
            return Milter.REJECT
        if "later" in s:
            return Milter.TEMPFAIL
        if "quarantine" in s:
            self.quarantine("the test milter quarantines it")
            return Milter.ACCEPT
        if "discard" in s:
            return Milter.DISCARD
        if "rewrite" in s:
            self.chgheader("Subject", 1, "[rewritten] " + s)
            self.addheader("X-Test-Milter", "seen")
            self.addheader("X-Top", "first", 0)
            self.chgfrom("<changed@example.org>")
            self.addrcpt("<extra@example.test>")
            self.delrcpt("<user@example.test>")
            self.replacebody(b"the milter's body\r\n")
        return Milter.ACCEPT

Milter.factory = TestMilter
Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.ADDRCPT | Milter.DELRCPT
                 | Milter.CHGBODY | Milter.QUARANTINE | Milter.CHGFROM)
Milter.runmilter("backstop-test", "inet:%s@127.0.0.1" % sys.argv[1], 60)
"#;

#[test]
fn a_libmilter_milter_rejects_quarantines_discards_and_changes_the_message() {
    let test = "a_libmilter_milter_rejects_quarantines_discards_and_changes_the_message";
    if !have("/usr/bin/python3", test) || !have("/usr/lib/python3/dist-packages/Milter", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let log = d.join("milter.out");
    let milter = Peer::spawn(
        "the test milter",
        Command::new("/usr/bin/python3")
            .args(["-c", TEST_MILTER])
            .arg(port.to_string()),
        &log,
    )
    .wait(&log, listening(port));
    // After it, a milter that is not there but may fail: logged, and let through.
    let gone: PathBuf = d.join("gone.sock");
    let server = Server::start(
        d,
        &(config(d, "")
            + &format!(
                "\n[[filter]]\ntype = \"milter\"\naddress = \"127.0.0.1:{port}\"\n\n\
                 [[filter]]\ntype = \"milter\"\naddress = \"unix:{}\"\non_error = \"accept\"\n",
                gone.display()
            )),
    );
    assert_eq!(
        send(&server, &plain("please reject me", "x")),
        "550 5.7.1 Rejected by the test milter"
    );
    assert_eq!(
        send(&server, &plain("try later", "x")),
        "451 4.7.1 Content filter asked to try again later"
    );
    assert_eq!(send(&server, &plain("discard this", "x")), "250 2.0.0 Ok");
    let quarantined = send(&server, &plain("quarantine this", "x"));
    assert!(
        quarantined.starts_with("250 2.0.0 Ok: queued as"),
        "{quarantined}"
    );
    let reason = server.quarantined(queue_id_in(&quarantined));
    assert_eq!(
        reason,
        format!("milter 127.0.0.1:{port}: the test milter quarantines it")
    );
    let changed = send(&server, &plain("rewrite me", "the original body"));
    assert!(changed.starts_with("250 2.0.0 Ok: queued as"), "{changed}");
    let log = server.log();
    assert!(
        log.contains("message let through unchecked (on_error = accept)")
            && log.contains("gone.sock"),
        "{log}"
    );
    drop(milter);
    assert_eq!(send(&server, &plain("hello", "x")), UNAVAILABLE);
    let id = queue_id_in(&changed);
    let messages = queued(d);
    server.stop();
    assert_eq!(messages.len(), 1, "only the changed message is queued");
    let (queued_id, envelope, body) = &messages[0];
    assert_eq!(*queued_id, id);
    assert_eq!(envelope.sender.to_string(), "<changed@example.org>");
    let recipients: Vec<String> = envelope
        .recipients
        .iter()
        .map(|r| r.address.to_string())
        .collect();
    assert_eq!(recipients, ["extra@example.test"]);
    let body = String::from_utf8_lossy(body);
    assert!(body.starts_with("X-Top: first\r\nReceived: "), "{body}");
    assert!(
        body.contains("Subject: [rewritten] rewrite me\r\n")
            && body.contains("X-Test-Milter: seen\r\n")
            && body.ends_with("\r\n\r\nthe milter's body\r\n"),
        "{body}"
    );
}
