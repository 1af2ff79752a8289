//! The bounce gate end to end. A message accepted for a mailbox that Dovecot then refuses
//! (full@example.com is over quota: 552 after the data) is:
//! - from a forged sender of a third-party domain: reported to nobody (Postfix, the MX of that
//!   domain, hears nothing), quarantined with the reason, counted;
//! - from an authenticated submitter: reported once, to the submitter's address at Postfix,
//!   as an RFC 3464 report Python's `email` package reads, DKIM-signed by the key of the
//!   host name's parent domain (dkimpy, Mail::DKIM and OpenDKIM verify it).
//!
//! And bounces coming in: with a valid BATV tag they are delivered with the tag stripped;
//! forged, expired or missing tags are refused at RCPT.

use std::time::Duration;

use crate::harness::{config, have, queue_id_in, RawClient, Server};
use crate::lmtp::Dovecot;
use crate::mx::{delivered, setup};

/// Routes example.com to Dovecot over LMTP, everything else by MX (Knot, then Postfix).
fn config_with_dovecot(setup: &crate::mx::Setup, dovecot: &Dovecot, extra: &str) -> String {
    setup
        .config(extra)
        .replace(
            "local_domains = [\"example.test\"]",
            "local_domains = [\"example.test\"]\nrelay_domains = [\"example.com\"]",
        )
        .replace(
            "[[route]]\ndomains = [\"implicit.example\"",
            &format!(
                "[[route]]\ndomains = [\"example.com\"]\nrelay = \"127.0.0.1:{}\"\nprotocol = \"lmtp\"\n\n[[route]]\ndomains = [\"implicit.example\"",
                dovecot.port
            ),
        )
}

#[test]
fn a_forged_sender_gets_nothing_and_the_message_waits_in_quarantine() {
    let test = "a_forged_sender_gets_nothing_and_the_message_waits_in_quarantine";
    let Some(setup) = setup(test) else { return };
    if !have("dovecot", test) {
        return;
    }
    let d = setup.dir.path();
    let dovecot = Dovecot::start(&d.join("dovecot"));
    let server = Server::start(d, &config_with_dovecot(&setup, &dovecot, ""));

    // Spam with a forged return path of a third party (bob@example.net exists at Postfix).
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO spam.example");
    assert!(c.command("MAIL FROM:<bob@example.net>").starts_with("250"));
    assert!(c.command("RCPT TO:<full@example.com>").starts_with("250"));
    assert!(c.command("DATA").starts_with("354"));
    c.send(b"From: bob@example.net\r\nSubject: cheap pills\r\n\r\nbuy now\r\n.\r\n");
    let reply = c.reply();
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let id = queue_id_in(&reply);
    c.command("QUIT");

    // Dovecot refuses it after acceptance: quarantined with the reason...
    let reason = server.quarantined(id);
    assert!(reason.contains("full@example.com: 552"), "{reason}");
    // ...counted...
    let (ok, metrics) = server.cli(&["metrics"]);
    assert!(ok, "{metrics}");
    assert!(
        metrics.contains("dsn_suppressed_total{reason=\"unverified\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("dsn_sent_total 0\n"), "{metrics}");
    // ...and nothing left backstop: nothing queued, and after a few more delivery passes the
    // forged sender's MX has heard nothing.
    std::thread::sleep(Duration::from_secs(3));
    assert!(crate::harness::queued(d).is_empty());
    assert!(setup.mx.mailbox("example.net/bob").is_empty());
    let maillog = setup.mx.maillog();
    assert!(!maillog.contains("from=<>"), "{maillog}");
    assert!(!maillog.contains("mail=1"), "{maillog}");
    // The delivery line says where the message went, as Postfix's status= does.
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains(" failed to=full@example.com ")
                && l.contains("reply=552")
                && l.ends_with("status=quarantined")),
        "{log}"
    );
    server.stop();
}

/// Reads the report's `message/delivery-status` part with Python's `email` package and prints
/// its fields as `name: value` lines, the per-message group first.
const READ_REPORT: &str = r#"
import email, sys
from email import policy
msg = email.message_from_bytes(open(sys.argv[1], "rb").read(), policy=policy.default)
assert msg.get_content_type() == "multipart/report", msg.get_content_type()
assert msg.get_param("report-type") == "delivery-status"
print("Auto-Submitted:", msg["Auto-Submitted"])
parts = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
assert len(parts) == 1
groups = parts[0].get_payload()
for group in groups:
    for name, value in group.items():
        if not name.endswith("-Date"):
            print("%s: %s" % (name, value))
    print("--")
"#;

#[test]
fn an_authenticated_submitter_gets_one_report() {
    let test = "an_authenticated_submitter_gets_one_report";
    let Some(setup) = setup(test) else { return };
    if !have("dovecot", test) || !crate::dkim::have_verifiers(test) {
        return;
    }
    let d = setup.dir.path();
    let dovecot = Dovecot::start(&d.join("dovecot"));
    // The usual setup: a key for the domain above the host name (mx.backstop.test).
    let (key, record) = crate::mx::dkim_key(d, "backstop.test", "rsa");
    // alice logs in and sends as her address at example.net, whose MX is Postfix.
    let server = Server::start(
        d,
        &config_with_dovecot(
            &setup,
            &dovecot,
            &format!(
                "\n[auth]\nrestrict_sender = false\n\n[[dkim]]\ndomain = \"backstop.test\"\n\
                 selector = \"s1\"\nkey_file = \"{}\"\n",
                key.display()
            ),
        ),
    );
    let transcript = server.submit_as_alice(
        "bob@example.net",
        "full@example.com",
        &["--header", "Subject: to a full mailbox"],
    );
    queue_id_in(&transcript);

    let reports = delivered(&setup.mx, "example.net/bob", 1, &server);
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains(" failed to=full@example.com ") && l.ends_with("status=bounced")),
        "{log}"
    );
    // Exactly one, even after more passes.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(setup.mx.mailbox("example.net/bob").len(), 1);
    let report = &reports[0];
    assert!(report.contains("Return-Path: <>"), "{report}");
    assert!(report.contains("Subject: to a full mailbox"), "{report}");
    let file = d.join("report.eml");
    std::fs::write(&file, report).unwrap();
    let fields = crate::harness::python(READ_REPORT, &[&file.display().to_string()]) + "\n";
    expect_test::expect![[r#"
        Auto-Submitted: auto-replied
        Reporting-MTA: dns; mx.backstop.test
        --
        Final-Recipient: rfc822; full@example.com
        Action: failed
        Status: 5.2.2
        Remote-MTA: dns; 127.0.0.1
        Diagnostic-Code: smtp; 552 5.2.2 <full@example.com> Quota exceeded (mailbox for user is full)
        --
    "#]].assert_eq(&fields);
    // From the host, signed by its parent domain's key, which dkimpy, Mail::DKIM and OpenDKIM
    // verify as Postfix delivered it: DKIM aligns with the From for DMARC (relaxed).
    assert!(
        report.contains("From: \"Mail Delivery System\" <MAILER-DAEMON@mx.backstop.test>"),
        "{report}"
    );
    assert!(report.contains(" d=backstop.test; "), "{report}");
    let crlf = d.join("report-crlf.eml");
    std::fs::write(&crlf, report.replace("\r\n", "\n").replace('\n', "\r\n")).unwrap();
    let keys = [crate::dkim::PublicKey {
        name: "s1._domainkey.backstop.test".into(),
        record,
    }];
    let verdicts = crate::dkim::verify(d, &[crlf], &keys);
    assert_eq!(
        [verdicts.dkimpy, verdicts.mail_dkim, verdicts.opendkim],
        [["pass"]; 3],
        "{report}"
    );
    let (_, metrics) = server.cli(&["metrics"]);
    assert!(metrics.contains("dsn_sent_total 1\n"), "{metrics}");
    server.stop();
}

#[test]
fn bounces_need_a_valid_batv_tag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let server = Server::start(
        d,
        &config(d, "").replace("[delivery]\npaused = true", "[delivery]\npaused = false"),
    );
    let (ok, tagged) = server.cli(&["batv", "sign", "alice@example.test"]);
    assert!(ok, "{tagged}");
    let tagged = tagged.trim().to_owned();
    let secret = std::fs::read(d.join("var/batv/0.key")).unwrap();
    let keys = backstop_batv::Keys::new(&[(0, secret.trim_ascii().to_vec())], 0, 7).unwrap();
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400;
    let alice = backstop_types::Address::parse("alice@example.test").unwrap();
    let expired = keys.sign(&alice, today - 10).to_string();
    let forged = tagged.replacen("=alice@", "=mallory@", 1);

    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO mx.elsewhere.example");
    assert!(c.command("MAIL FROM:<>").starts_with("250"));
    let refused = |c: &mut RawClient, rcpt: &str, why: &str| {
        let reply = c.command(&format!("RCPT TO:<{rcpt}>"));
        assert!(
            reply.starts_with("550 5.7.1 Bounce refused: ") && reply.contains(why),
            "{rcpt}: {reply}"
        );
    };
    refused(&mut c, "alice@example.test", "carries no BATV tag");
    refused(&mut c, &forged, "BATV tag is not valid");
    refused(&mut c, &expired, "BATV tag has expired");
    // Each refusal is counted by stage, the check that decided, and code.
    let (_, metrics) = server.cli(&["metrics"]);
    assert!(
        metrics.contains("smtp_rejections_total{stage=\"rcpt\",check=\"batv\",code=\"5.7.1\"} 3\n"),
        "{metrics}"
    );
    assert!(c.command(&format!("RCPT TO:<{tagged}>")).starts_with("250"));
    assert!(c.command("DATA").starts_with("354"));
    c.send(b"Subject: Undelivered Mail Returned to Sender\r\n\r\nyour mail bounced\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.command("QUIT");

    // Delivered to alice, the tag stripped.
    let mail = &server.local_mailbox("example.test/alice", 1)[0];
    assert!(
        mail.contains("Delivered-To: alice@example.test\r\n"),
        "{mail}"
    );
    assert!(mail.contains("Return-Path: <>\r\n"), "{mail}");
    server.stop();
}

/// A report (null sender) to user@example.test returning an original with `message_id`.
pub(crate) fn bounce_returning(server: &Server, message_id: &str) -> String {
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO mx.elsewhere.example");
    assert!(c.command("MAIL FROM:<>").starts_with("250"));
    assert!(c.command("RCPT TO:<user@example.test>").starts_with("250"));
    assert!(c.command("DATA").starts_with("354"));
    c.send(
        format!(
            "From: MAILER-DAEMON@elsewhere.example\r\n\
             Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
             --b\r\nContent-Type: text/plain\r\n\r\nsorry\r\n\
             --b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; elsewhere.example\r\n\r\n\
             --b\r\nContent-Type: message/rfc822\r\n\r\nFrom: user@example.test\r\n\
             Message-ID: <{message_id}>\r\n\r\nhello\r\n--b--\r\n.\r\n"
        )
        .as_bytes(),
    );
    let reply = c.reply();
    c.command("QUIT");
    reply
}

#[test]
fn without_batv_a_bounce_must_return_a_message_we_sent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = config(d, "")
        + "\n[batv]\ncheck_bounces = false\n\n[bounce_provenance]\ndomains = [\"example.test\"]\n";
    // Nothing sent yet: nothing to compare with, so bounces pass.
    let server = Server::start(d, &config);
    let reply = bounce_returning(&server, "never@example.test");
    assert!(reply.starts_with("250"), "{reply}");
    server.stop();

    // Once we have sent something, a bounce must return one of ours.
    {
        let queue = backstop_queue::Queue::open(&d.join("var/queue")).unwrap();
        queue
            .record_sent_message_id(
                backstop_queue::message_id_hash("<ours@example.test>"),
                backstop_types::UnixTime(1_800_000_000),
            )
            .unwrap();
    }
    let server = Server::restart(d);
    let reply = bounce_returning(&server, "ours@example.test");
    assert!(reply.starts_with("250"), "{reply}");
    let reply = bounce_returning(&server, "forged@spam.example");
    assert_eq!(
        reply.trim_end(),
        "550 5.7.1 Bounce refused: it returns a message we never sent"
    );
    server.stop();
}
