//! SPF, DKIM and DMARC at the end of DATA, against records Knot DNS publishes on loopback, for
//! mail from 127.0.0.1 (a client that did not log in). Signatures are made by dkimpy.

use std::path::Path;

use crate::dns::{zone, Knot};
use crate::harness::{config, have, python, queue_id_in, queued, RawClient, Server};
use crate::mx::dkim_key;

/// A TXT record's value as zone-file strings of at most 255 octets.
fn txt(value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(200)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("( {} )", parts.join(" "))
}

/// Seals `message` (which carries a forwarder's Authentication-Results) with ARC as
/// forwarder.good.example, selector s1 of good.example.
const SEAL: &str = r#"
import sys, dkim
msg = open(sys.argv[1], "rb").read()
key = open(sys.argv[2], "rb").read()
seal = dkim.arc_sign(msg, b"s1", b"good.example", key, b"forwarder.good.example")
sys.stdout.write((b"".join(seal) + msg).decode())
"#;

/// Signs `message` for good.example with selector s1 and the key in `key_file`.
const SIGN: &str = r#"
import sys, dkim
msg = open(sys.argv[1], "rb").read()
key = open(sys.argv[2], "rb").read()
sig = dkim.sign(msg, b"s1", b"good.example", key, include_headers=[b"From", b"Subject", b"Date"])
sys.stdout.write((sig + msg).decode())
"#;

fn message(dir: &Path, from: &str, subject: &str, key: Option<&Path>) -> String {
    let text = format!(
        "From: {from}\r\nSubject: {subject}\r\nDate: Sun, 22 Nov 2026 20:00:00 +0000\r\n\r\nhello\r\n"
    );
    let Some(key) = key else { return text };
    let file = dir.join("unsigned.eml");
    std::fs::write(&file, &text).unwrap();
    python(
        SIGN,
        &[&file.display().to_string(), &key.display().to_string()],
    )
    .replace("\r\n", "\n")
    .replace('\n', "\r\n")
        + "\r\n"
}

/// Sends one message from 127.0.0.1; the reply to the data.
fn send(server: &Server, mail_from: &str, message: &str) -> String {
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.good.example");
    let reply = c.command(&format!("MAIL FROM:<{mail_from}>"));
    assert!(reply.starts_with("250"), "{reply}");
    assert!(c.command("RCPT TO:<user@example.test>").starts_with("250"));
    assert!(c.command("DATA").starts_with("354"));
    c.send(message.as_bytes());
    c.send(b".\r\n");
    let reply = c.reply();
    c.command("QUIT");
    reply
}

#[test]
fn spf_dkim_and_dmarc_decide_at_the_end_of_data() {
    let test = "spf_dkim_and_dmarc_decide_at_the_end_of_data";
    if !have("knotd", test) || !have("/usr/bin/python3", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, record) = dkim_key(d, "s1", "rsa");
    let outside = "\"v=spf1 ip4:192.0.2.0/24 -all\"";
    // The parent zone too: DMARC's tree walk asks _dmarc.example, which must say NXDOMAIN (as
    // a real TLD does), not REFUSED.
    // Reverse DNS: 127.0.0.1 is client.good.example, which resolves back to it; 127.0.0.2
    // claims liar.good.example, which does not.
    let zones = [
        ("example", zone("example", "")),
        (
            "0.0.127.in-addr.arpa",
            zone(
                "0.0.127.in-addr.arpa",
                "1 IN PTR client.good.example.\n2 IN PTR liar.good.example.",
            ),
        ),
        (
            "good.example",
            zone(
                "good.example",
                &format!(
                    "@ IN TXT \"v=spf1 ip4:127.0.0.0/8 -all\"\n_dmarc IN TXT \"v=DMARC1; p=reject\"\n\
                     client IN A 127.0.0.1\nliar IN A 127.0.0.9\ns1._domainkey IN TXT {}",
                    txt(&record)
                ),
            ),
        ),
        (
            "forged.example",
            zone("forged.example", &format!("@ IN TXT {outside}\n_dmarc IN TXT \"v=DMARC1; p=reject\"")),
        ),
        (
            "quar.example",
            zone("quar.example", &format!("@ IN TXT {outside}\n_dmarc IN TXT \"v=DMARC1; p=quarantine\"")),
        ),
        ("spfonly.example", zone("spfonly.example", &format!("@ IN TXT {outside}"))),
    ];
    let zone_refs: Vec<(&str, &str)> = zones.iter().map(|(o, z)| (*o, z.as_str())).collect();
    let knot = Knot::start(&d.join("knot"), &zone_refs);
    let config = config(d, "").replace(
        "[sender_checks]\nenabled = false",
        "[sender_checks]\nenabled = true\niprev_fail = \"reject\"",
    ) + &format!("\n[dns]\nnameservers = [\"{}\"]\n", knot.address);
    let server = Server::start(d, &config);

    // Aligned SPF and DKIM: accepted, with the results on top.
    let signed = message(d, "a@good.example", "good", Some(&key));
    let reply = send(&server, "a@good.example", &signed);
    assert!(
        reply.starts_with("250 2.0.0 Ok: queued as"),
        "{reply}\n{}",
        server.log()
    );
    let good = queue_id_in(&reply);

    // A forged sender of a p=reject domain: refused while the client is connected.
    let reply = send(
        &server,
        "a@forged.example",
        &message(d, "a@forged.example", "forged", None),
    );
    assert_eq!(
        reply.trim_end(),
        "550 5.7.1 Message rejected by the DMARC policy of forged.example"
    );

    // p=quarantine: accepted into quarantine.
    let reply = send(
        &server,
        "a@quar.example",
        &message(d, "a@quar.example", "quar", None),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let reason = server.quarantined(queue_id_in(&reply));
    assert!(
        reason.contains("DMARC fail for quar.example (p=quarantine)"),
        "{reason}"
    );

    // SPF fail, no DMARC: 5.7.23.
    let reply = send(
        &server,
        "a@spfonly.example",
        &message(d, "a@spfonly.example", "spf", None),
    );
    assert!(
        reply.starts_with("550 5.7.23 SPF check failed: spfonly.example"),
        "{reply}"
    );

    // From 127.0.0.2, whose reverse DNS does not confirm: 5.7.25 (iprev_fail = "reject").
    let reply = python(
        r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), source_address=("127.0.0.2", 0), timeout=20)
s.ehlo("client.good.example")
s.mail("a@good.example")
s.rcpt("user@example.test")
code, text = s.data(b"From: a@good.example\r\nSubject: liar\r\n\r\nx\r\n")
print(code, text.decode())
"#,
        &[&server.mx.port().to_string()],
    );
    assert_eq!(
        reply,
        "550 5.7.25 Reverse DNS of 127.0.0.2 does not resolve back to it"
    );

    // A signature broken in transit: DKIM does not verify (mail-auth says neutral for a body
    // hash mismatch), but SPF is aligned, so DMARC passes.
    let broken = message(d, "a@good.example", "broken", Some(&key)).replace("hello", "HELLO");
    let reply = send(&server, "a@good.example", &broken);
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply}");
    let broken = queue_id_in(&reply);

    // A domain whose records cannot be had (Knot refuses: it serves no such zone): 451, the
    // client tries again later.
    let reply = send(
        &server,
        "a@unserved.test",
        &message(d, "a@unserved.test", "dns", None),
    );
    assert!(
        reply.starts_with("451 4.7.24 Sender authentication could not be completed"),
        "{reply}"
    );

    // Sealed with ARC by a forwarder: the chain verifies and is recorded.
    let unsealed = d.join("unsealed.eml");
    std::fs::write(
        &unsealed,
        "Authentication-Results: forwarder.good.example; spf=pass smtp.mailfrom=a@good.example\r\n\
         From: a@good.example\r\nSubject: sealed\r\nDate: Sun, 22 Nov 2026 20:00:00 +0000\r\n\r\nhello\r\n",
    )
    .unwrap();
    let sealed = python(
        SEAL,
        &[&unsealed.display().to_string(), &key.display().to_string()],
    )
    .replace("\r\n", "\n")
    .replace('\n', "\r\n")
        + "\r\n";
    let reply = send(&server, "a@good.example", &sealed);
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply}");
    let sealed = queue_id_in(&reply);

    // Forwarded: SPF fails for the forwarder's envelope, but the aligned DKIM signature of the
    // From domain makes DMARC pass, so it is accepted.
    let forwarded = message(d, "a@good.example", "forwarded", Some(&key));
    let reply = send(&server, "list@spfonly.example", &forwarded);
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply}");
    let forwarded = queue_id_in(&reply);

    // The refusals at the end of DATA, counted: DMARC 5.7.1, SPF 5.7.23, iprev 5.7.25, and
    // the DNS failure 4.7.24.
    let (_, metrics) = server.cli(&["metrics"]);
    for reason in ["5.7.1", "5.7.23", "5.7.25", "4.7.24"] {
        let line = format!("smtp_rejections_total{{stage=\"data\",reason=\"{reason}\"}} 1\n");
        assert!(metrics.contains(&line), "{line}: {metrics}");
    }
    let messages = queued(d);
    server.stop();
    let body = |id| {
        let (_, _, body) = messages.iter().find(|(i, _, _)| *i == id).unwrap();
        String::from_utf8_lossy(body).into_owned()
    };
    let good = body(good);
    assert!(
        good.starts_with("Authentication-Results: mx.backstop.test;"),
        "{good}"
    );
    for result in [
        "iprev=pass",
        "dkim=pass",
        "spf=pass",
        "dmarc=pass",
        "header.i=@good.example",
    ] {
        assert!(good.contains(result), "{result}: {good}");
    }
    assert!(good.contains("arc=none"), "{good}");
    let broken = body(broken);
    assert!(
        broken.contains("dkim=neutral (body hash did not verify)") && broken.contains("dmarc=pass"),
        "{broken}"
    );
    let sealed = body(sealed);
    assert!(sealed.contains("arc=pass"), "{sealed}");
    let forwarded = body(forwarded);
    for result in ["dkim=pass", "spf=fail", "dmarc=pass"] {
        assert!(forwarded.contains(result), "{result}: {forwarded}");
    }
    // Nothing else was queued: the refused ones are not, the quarantined one is apart.
    assert_eq!(messages.len(), 4);
}

#[test]
fn clients_on_a_blocklist_are_refused_at_mail() {
    let test = "clients_on_a_blocklist_are_refused_at_mail";
    if !have("knotd", test) || !have("/usr/bin/python3", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 127.0.0.2 is on the reject list (code 127.0.0.2); 127.0.0.1 only on the list whose code
    // the config does not count, and on the list that only logs.
    let zones = [
        (
            "bl.test",
            zone(
                "bl.test",
                "2.0.0.127 IN A 127.0.0.2\n1.0.0.127 IN A 127.0.0.10",
            ),
        ),
        ("log.test", zone("log.test", "1.0.0.127 IN A 127.0.0.2")),
    ];
    let zone_refs: Vec<(&str, &str)> = zones.iter().map(|(o, z)| (*o, z.as_str())).collect();
    let knot = Knot::start(&d.join("knot"), &zone_refs);
    let config = config(d, "")
        + &format!(
            "\n[dns]\nnameservers = [\"{}\"]\n\n[[dnsbl]]\nzone = \"bl.test\"\ncodes = [\"127.0.0.2\"]\n\n\
             [[dnsbl]]\nzone = \"log.test\"\naction = \"log\"\n\n\
             [[dnsbl]]\nzone = \"unserved.test\"\n",
            knot.address
        );
    let server = Server::start(d, &config);
    // Listed: refused at MAIL, from 127.0.0.2.
    let reply = python(
        r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), source_address=("127.0.0.2", 0), timeout=20)
s.ehlo("listed.example")
code, text = s.mail("a@example.org")
print(code, text.decode())
"#,
        &[&server.mx.port().to_string()],
    );
    assert_eq!(
        reply,
        "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test"
    );
    // 127.0.0.1: an uncounted code, a log-only list, and a list that cannot answer: accepted.
    let reply = send(
        &server,
        "a@example.org",
        &message(d, "a@example.org", "clean", None),
    );
    assert!(reply.starts_with("250"), "{reply}");
    let log = server.log();
    assert!(
        log.contains("client is on a blocklist zone=log.test"),
        "{log}"
    );
    assert!(
        log.contains("blocklist lookup failed: not listed zone=unserved.test"),
        "{log}"
    );
    server.stop();
}
