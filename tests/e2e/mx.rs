//! Delivery by MX: Knot DNS on loopback publishes the records, Debian's Postfix is the remote
//! MX on 127.0.0.2. Covered: STARTTLS with a verified certificate, a dead MX before a live one,
//! a 5xx for one recipient of two, DKIM signatures (RSA and Ed25519) checked by dkimpy, BATV
//! return paths checked by an independent implementation, null MX, a domain that does not
//! exist, the implicit MX, a 4xx then success on retry, and a peer down until the message
//! expires.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::dns::{zone, Knot};
use crate::harness::{config, have, is_root, python, queue_id_in, Server, BIN};
use crate::postfix::{run, PostfixMx};

/// The zones: example.net's best MX is dead (127.0.0.3, where nothing listens), the next is
/// Postfix; implicit.example has no MX but an address; ipv6.example's MX has only an IPv6
/// address (Postfix on ::1); nullmx.example takes no mail;
/// down.example's only MX is dead.
fn zones() -> Vec<(&'static str, String)> {
    vec![
        (
            "example.net",
            zone(
                "example.net",
                "@ IN MX 5 dead.example.net.\n@ IN MX 10 mx1.example.net.\n\
                 dead IN A 127.0.0.3\nmx1 IN A 127.0.0.2",
            ),
        ),
        (
            "implicit.example",
            zone("implicit.example", "@ IN A 127.0.0.2"),
        ),
        (
            "ipv6.example",
            zone(
                "ipv6.example",
                "@ IN MX 10 mx.ipv6.example.\nmx IN AAAA ::1",
            ),
        ),
        ("nullmx.example", zone("nullmx.example", "@ IN MX 0 .")),
        (
            "down.example",
            zone(
                "down.example",
                "@ IN MX 10 mx.down.example.\nmx IN A 127.0.0.3",
            ),
        ),
    ]
}

/// Fields drop in order: the peers stop before their directory is removed (Postfix needs its
/// config to stop).
pub struct Setup {
    pub knot: Knot,
    pub mx: PostfixMx,
    pub dir: tempfile::TempDir,
}

/// Knot and Postfix running, or `None` when the test is skipped.
pub fn setup(test: &str) -> Option<Setup> {
    if !have("/usr/sbin/postfix", test)
        || !have("knotd", test)
        || !have("swaks", test)
        || !is_root(test)
    {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let zones = zones();
    let zones: Vec<(&str, &str)> = zones.iter().map(|(o, z)| (*o, z.as_str())).collect();
    let knot = Knot::start(&dir.path().join("knot"), &zones);
    let mx = PostfixMx::start(&dir.path().join("postfix"));
    Some(Setup { knot, mx, dir })
}

impl Setup {
    /// The harness config, delivering: implicit.example and ipv6.example by MX with
    /// opportunistic TLS (their names are not on the peer's certificate), everything else by
    /// MX with verified TLS.
    pub fn config(&self, extra: &str) -> String {
        let d = self.dir.path();
        config(d, "").replace(
            "[delivery]\npaused = true",
            &format!("[delivery]\npaused = false\nmx_port = {}", self.mx.port),
        ) + &format!(
            r#"
[dns]
nameservers = ["{dns}"]

[[route]]
domains = ["implicit.example", "ipv6.example"]
mx = true

[[route]]
domains = ["*"]
mx = true
tls = "require"
tls_ca_file = "{ca}"
{extra}"#,
            dns = self.knot.address,
            ca = self.mx.ca.display(),
        )
    }
}

/// Waits for a message in the peer's mailbox.
pub fn delivered(mx: &PostfixMx, mailbox: &str, count: usize, server: &Server) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let messages = mx.mailbox(mailbox);
        if messages.len() >= count {
            return messages;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered to {mailbox}; backstop:\n{}\npostfix:\n{}",
            server.log(),
            mx.maillog()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Checks a BATV tag the way draft-levine-smtp-batv-01 describes it, written anew in Python:
/// prints `valid` or why not.
const BATV_CHECK: &str = r#"
import hmac, hashlib, sys, time
secret = open(sys.argv[1], "rb").read().strip()
local, domain = sys.argv[2].rsplit("@", 1)
scheme, tag, core = local.split("=", 2)
assert scheme.lower() == "prvs", scheme
k, ddd, sig = tag[0], tag[1:4], tag[4:]
mac = hmac.new(secret, (k + ddd + (core + "@" + domain).lower()).encode(), hashlib.sha1)
today = int(time.time()) // 86400
if mac.hexdigest()[:6] != sig.lower():
    print("bad signature")
elif (int(ddd) - today % 1000) % 1000 > 7:
    print("expired")
else:
    print("valid")
"#;

/// Verifies the DKIM signatures of a message with dkimpy, given the key records by name.
const DKIM_CHECK: &str = r#"
import sys, dkim
msg = open(sys.argv[1], "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
records = dict(a.split("=", 1) for a in sys.argv[2:])
def dnsfunc(name, timeout=5):
    record = records.get(name.decode().rstrip("."))
    return record.encode() if record else None
d = dkim.DKIM(msg)
try:
    ok = d.verify(dnsfunc=dnsfunc)
except dkim.DKIMException as e:
    ok = False
print(("pass " if ok else "fail ") + d.domain.decode() + " " + d.signature_fields.get(b"a", b"").decode())
"#;

/// A DKIM key pair made by openssl: the private key file and the DNS record's value.
pub fn dkim_key(dir: &Path, name: &str, algorithm: &str) -> (std::path::PathBuf, String) {
    let key = dir.join(format!("{name}.pem"));
    let key_arg = key.display().to_string();
    match algorithm {
        "rsa" => run(
            "openssl",
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &key_arg,
            ],
        ),
        _ => run(
            "openssl",
            &["genpkey", "-algorithm", "ED25519", "-out", &key_arg],
        ),
    }
    let der = Command::new("openssl")
        .args(["pkey", "-in", &key_arg, "-pubout", "-outform", "DER"])
        .output()
        .unwrap()
        .stdout;
    // RSA: the whole SubjectPublicKeyInfo; Ed25519: the raw 32-byte key (RFC 8463).
    let public = if algorithm == "rsa" {
        der
    } else {
        der[der.len() - 32..].to_vec()
    };
    let b64 = python(
        "import base64,sys; print(base64.b64encode(bytes.fromhex(sys.argv[1])).decode())",
        &[&public
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()],
    );
    let k = if algorithm == "rsa" { "rsa" } else { "ed25519" };
    (key, format!("v=DKIM1; k={k}; p={b64}"))
}

#[test]
fn mx_delivery_over_verified_tls_signed_and_tagged() {
    let test = "mx_delivery_over_verified_tls_signed_and_tagged";
    let Some(setup) = setup(test) else { return };
    if !have("/usr/bin/python3", test) {
        return;
    }
    let d = setup.dir.path();
    let keys = d.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (rsa_key, rsa_record) = dkim_key(&keys, "rsa", "rsa");
    let (ed_key, ed_record) = dkim_key(&keys, "ed", "ed25519");
    let (_, other_record) = dkim_key(&keys, "other", "rsa");
    let server = Server::start(
        d,
        &setup.config(&format!(
            "\n[[dkim]]\ndomain = \"example.test\"\nselector = \"r1\"\nkey_file = \"{}\"\n\
             \n[[dkim]]\ndomain = \"ed.example.test\"\nselector = \"e1\"\nkey_file = \"{}\"\n",
            rsa_key.display(),
            ed_key.display()
        ))
        // alice writes From: her address in the other domain too.
        .replace(
            "name = \"alice\"\n",
            "name = \"alice\"\naddresses = [\"alice@example.test\", \"alice@ed.example.test\"]\n",
        ),
    );

    // Two recipients: bob exists at the peer, nobody does.
    let transcript = server.submit_as_alice(
        "alice@example.test",
        "bob@example.net,nobody@example.net",
        &["--header", "Subject: by MX, RSA"],
    );
    let first = queue_id_in(&transcript);
    // From another of our domains, whose key is Ed25519.
    let transcript = server.submit_as_alice(
        "alice@example.test",
        "bob@example.net",
        &[
            "--header",
            "From: alice@ed.example.test",
            "--header",
            "Subject: by MX, Ed25519",
        ],
    );
    queue_id_in(&transcript);

    let messages = delivered(&setup.mx, "example.net/bob", 2, &server);
    let rsa_message = messages.iter().find(|m| m.contains("by MX, RSA")).unwrap();
    let ed_message = messages
        .iter()
        .find(|m| m.contains("by MX, Ed25519"))
        .unwrap();
    for message in &messages {
        // Over TLS, to mx1 after the dead MX with the better preference.
        assert!(
            message.contains("by peer-mx.example.net (Postfix) with ESMTPS"),
            "{message}"
        );
        // The return path carries a BATV tag that an independent implementation accepts.
        let return_path = message
            .lines()
            .find_map(|l| l.strip_prefix("Return-Path: <"))
            .and_then(|l| l.strip_suffix('>'))
            .unwrap_or_else(|| panic!("no Return-Path:\n{message}"));
        assert!(return_path.starts_with("prvs=0"), "{return_path}");
        assert!(
            return_path.ends_with("=alice@example.test"),
            "{return_path}"
        );
        let secret = d.join("var/batv/0.key").display().to_string();
        assert_eq!(python(BATV_CHECK, &[&secret, return_path]), "valid");
        // And backstop itself strips it back to the address.
        let out = Command::new(BIN)
            .args(["batv", "verify", return_path, "--config"])
            .arg(d.join("backstop.toml"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "alice@example.test"
        );
    }
    assert!(
        server.log().contains("trying the next MX address"),
        "{}",
        server.log()
    );
    // Postfix offers PIPELINING and CHUNKING: each message went as one BDAT, never DATA. (The
    // session ends, and Postfix logs it, once it has been idle for a while.)
    let deadline = Instant::now() + Duration::from_secs(20);
    let maillog = loop {
        let maillog = setup.mx.maillog();
        if maillog.contains("quit=1") {
            break maillog;
        }
        assert!(Instant::now() < deadline, "{maillog}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let sessions: Vec<&str> = maillog
        .lines()
        .filter(|l| l.contains("disconnect from") && l.contains("mail="))
        .collect();
    for session in sessions {
        assert!(
            session.contains("bdat=") && !session.contains("data="),
            "{session}"
        );
    }

    // The DKIM signatures verify with dkimpy, as Postfix received them, and fail with the
    // wrong key.
    let file = |name: &str, text: &str| {
        let path = d.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let rsa_file = file("rsa.eml", rsa_message);
    let ed_file = file("ed.eml", ed_message);
    let rsa_dns = format!("r1._domainkey.example.test={rsa_record}");
    let ed_dns = format!("e1._domainkey.ed.example.test={ed_record}");
    assert_eq!(
        python(DKIM_CHECK, &[&rsa_file, &rsa_dns]),
        "pass example.test rsa-sha256"
    );
    assert_eq!(
        python(DKIM_CHECK, &[&ed_file, &ed_dns]),
        "pass ed.example.test ed25519-sha256"
    );
    let wrong = format!("r1._domainkey.example.test={other_record}");
    assert_eq!(
        python(DKIM_CHECK, &[&rsa_file, &wrong]),
        "fail example.test rsa-sha256"
    );

    // Their Message-IDs are in the sent index, for recognising replies and bounces later.
    let queue = backstop_queue::Queue::open_read_only(&d.join("var/queue")).unwrap();
    for message in &messages {
        let id = message
            .lines()
            .find_map(|l| l.strip_prefix("Message-Id: "))
            .unwrap_or_else(|| panic!("no Message-Id:\n{message}"));
        let hash = backstop_queue::message_id_hash(id);
        assert!(queue.sent_message_id(hash).unwrap().is_some(), "{id}");
    }
    assert!(queue
        .sent_message_id(backstop_queue::message_id_hash("<never@sent>"))
        .unwrap()
        .is_none());
    drop(queue);

    // nobody@ got Postfix's 550: alice, who logged in to send, gets one report, which lands
    // in her own mailbox here; the message is not kept in quarantine.
    let report = &server.local_mailbox("example.test/alice", 1)[0];
    assert!(
        report.contains("Subject: Undelivered Mail Returned to Sender"),
        "{report}"
    );
    assert!(
        report.contains("Final-Recipient: rfc822; nobody@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx1.example.net\r\nDiagnostic-Code: smtp; 550 5.1.1 <nobody@example.net>"),
        "{report}"
    );
    assert!(
        !report.contains("Final-Recipient: rfc822; bob@"),
        "{report}"
    );
    let queue = backstop_queue::Queue::open_read_only(&d.join("var/queue")).unwrap();
    assert!(queue.quarantine_show(first).unwrap().is_none());
    server.stop();
}

#[test]
fn null_mx_no_such_domain_implicit_mx_and_ipv6() {
    let Some(setup) = setup("null_mx_no_such_domain_implicit_mx_and_ipv6") else {
        return;
    };
    let d = setup.dir.path();
    let server = Server::start(d, &setup.config(""));
    let transcript = server.submit_as_alice(
        "alice@example.test",
        "user@nullmx.example,user@nosuch.example.net,bob@implicit.example,bob@ipv6.example",
        &[],
    );
    queue_id_in(&transcript);
    // implicit.example has no MX: its address takes the mail.
    delivered(&setup.mx, "implicit.example/bob", 1, &server);
    // ipv6.example's MX has only an IPv6 address.
    let over_ipv6 = delivered(&setup.mx, "ipv6.example/bob", 1, &server);
    assert!(
        over_ipv6[0].contains("from mx.backstop.test (unknown [IPv6:::1])"),
        "{}",
        over_ipv6[0]
    );
    // The others fail at once, on the first attempt: one report to alice lists both.
    let report = &server.local_mailbox("example.test/alice", 1)[0];
    assert!(
        report.contains("Final-Recipient: rfc822; user@nullmx.example\r\nAction: failed\r\nStatus: 5.1.10\r\nDiagnostic-Code: smtp; 556 5.1.10 the domain accepts no mail (null MX)"),
        "{report}"
    );
    assert!(
        report.contains(
            "Final-Recipient: rfc822; user@nosuch.example.net\r\nAction: failed\r\nStatus: 5.1.2"
        ),
        "{report}"
    );
    assert!(
        !report.contains("Final-Recipient: rfc822; bob@"),
        "{report}"
    );
    server.stop();
}

#[test]
fn a_4xx_is_retried_until_it_succeeds() {
    let Some(setup) = setup("a_4xx_is_retried_until_it_succeeds") else {
        return;
    };
    let d = setup.dir.path();
    setup.mx.reconfigure(&[
        "smtpd_recipient_restrictions = check_recipient_access inline:{ { bob@example.net = 451 4.3.2 come back later } }, reject_unlisted_recipient",
    ]);
    let server = Server::start(d, &setup.config(""));
    let transcript = server.submit_as_alice("alice@example.test", "bob@example.net", &[]);
    let shown = server.after_first_attempt(queue_id_in(&transcript));
    assert!(shown.contains("451 4.3.2 <bob@example.net>"), "{shown}");
    assert!(shown.contains("come back later"), "{shown}");
    assert!(setup.mx.mailbox("example.net/bob").is_empty());
    setup
        .mx
        .reconfigure(&["smtpd_recipient_restrictions = reject_unlisted_recipient"]);
    let (ok, out) = server.cli(&["queue", "flush"]);
    assert!(ok, "{out}");
    delivered(&setup.mx, "example.net/bob", 1, &server);
    server.stop();
}

#[test]
fn a_peer_down_until_the_message_expires() {
    let Some(setup) = setup("a_peer_down_until_the_message_expires") else {
        return;
    };
    let d = setup.dir.path();
    let server = Server::start(
        d,
        &setup.config("\n[queue]\nmin_backoff = \"1s\"\nmax_backoff = \"1s\"\nlifetime = \"4s\"\n"),
    );
    let transcript = server.submit_as_alice("alice@example.test", "someone@down.example", &[]);
    queue_id_in(&transcript);
    // Expired: alice is told, with the last reply.
    let report = &server.local_mailbox("example.test/alice", 1)[0];
    assert!(
        report.contains(
            "Final-Recipient: rfc822; someone@down.example\r\nAction: failed\r\nStatus: 4.4.7"
        ),
        "{report}"
    );
    assert!(
        report.contains("Message expired: not delivered in 4 seconds"),
        "{report}"
    );
    let log = server.log();
    assert!(log.contains("127.0.0.3"), "{log}");
    server.stop();
}

#[test]
fn messages_to_one_destination_share_a_connection() {
    let Some(setup) = setup("messages_to_one_destination_share_a_connection") else {
        return;
    };
    let d = setup.dir.path();
    // Queue three messages with delivery paused, then deliver them all at once with one
    // connection allowed to the destination.
    let running = setup.config("").replace(
        "[delivery]\npaused = false",
        "[delivery]\nmax_connections_per_destination = 1\npaused = false",
    );
    let paused = running.replace("paused = false", "paused = true");
    let server = Server::start(d, &paused);
    for n in 0..3 {
        let transcript = server.submit_as_alice(
            "alice@example.test",
            "bob@example.net",
            &["--header", &format!("Subject: reuse {n}")],
        );
        queue_id_in(&transcript);
    }
    server.stop();
    std::fs::write(d.join("backstop.toml"), running).unwrap();
    let server = Server::restart(d);
    delivered(&setup.mx, "example.net/bob", 3, &server);
    server.stop();
    // One session carried all three; backstop said QUIT at the end.
    let maillog = setup.mx.maillog();
    let sessions: Vec<&str> = maillog
        .lines()
        .filter(|l| l.contains("disconnect from") && l.contains("mail="))
        .collect();
    assert_eq!(sessions.len(), 1, "{maillog}");
    assert!(
        sessions[0].contains("mail=3 rcpt=3 bdat=3 quit=1"),
        "{maillog}"
    );
}

#[test]
fn a_dns_failure_is_temporary() {
    let Some(setup) = setup("a_dns_failure_is_temporary") else {
        return;
    };
    let d = setup.dir.path();
    let server = Server::start(d, &setup.config(""));
    // Knot serves no such zone and does not recurse: it answers REFUSED, which is no answer.
    let transcript = server.submit_as_alice("alice@example.test", "user@unserved.example", &[]);
    let shown = server.after_first_attempt(queue_id_in(&transcript));
    assert!(shown.contains("pending"), "{shown}");
    assert!(
        shown.contains("451 4.4.3 MX lookup for unserved.example failed"),
        "{shown}"
    );
    server.stop();
}
