//! SPF, DKIM and DMARC at the end of DATA, against records Knot DNS publishes on loopback, for
//! mail from 127.0.0.1 (a client that did not log in). Signatures are made by dkimpy.

use std::path::Path;

use crate::dns::{zone, Knot};
use crate::harness::{config, have, python, queue_id_in, queued, RawClient, Server};
use crate::mx::dkim_key;

/// A TXT record's value as zone-file strings of at most 255 octets.
pub fn txt(value: &str) -> String {
    let parts: Vec<String> = value
        .as_bytes()
        .chunks(200)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("( {} )", parts.join(" "))
}

/// Seals a message (which carries the forwarder's own Authentication-Results, whose
/// authserv-id is argv[4]) with ARC, selector s1 of the domain argv[3].
const SEAL: &str = r#"
import sys, dkim
msg = open(sys.argv[1], "rb").read()
key = open(sys.argv[2], "rb").read()
seal = dkim.arc_sign(msg, b"s1", sys.argv[3].encode(), key, sys.argv[4].encode())
sys.stdout.write((b"".join(seal) + msg).decode())
"#;

/// Signs a message with selector s1 of the domain argv[3] and the key in argv[2].
const SIGN: &str = r#"
import sys, dkim
msg = open(sys.argv[1], "rb").read()
key = open(sys.argv[2], "rb").read()
sig = dkim.sign(msg, b"s1", sys.argv[3].encode(), key, include_headers=[b"From", b"Subject", b"Date"])
sys.stdout.write((sig + msg).decode())
"#;

/// Runs `script` (SIGN or SEAL) over `text` with `args` after the file and the key; the
/// result with CRLF line ends.
fn dkimpy(dir: &Path, script: &str, text: &str, key: &Path, args: &[&str]) -> String {
    let file = dir.join("unsigned.eml");
    std::fs::write(&file, text).unwrap();
    let mut all = vec![file.display().to_string(), key.display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    python(script, &all)
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
        + "\r\n"
}

/// A message from `from`, signed with selector s1 of `signer` when given.
pub fn message(dir: &Path, from: &str, subject: &str, signer: Option<(&Path, &str)>) -> String {
    let text = format!(
        "From: {from}\r\nSubject: {subject}\r\nDate: Sun, 22 Nov 2026 20:00:00 +0000\r\n\r\nhello\r\n"
    );
    match signer {
        Some((key, domain)) => dkimpy(dir, SIGN, &text, key, &[domain]),
        None => text,
    }
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
    // Reverse DNS of 127.0.0.0/8 never reaches a nameserver: the resolver answers
    // `localhost.` itself (RFC 6761), which resolves to 127.0.0.1 only. So 127.0.0.1 passes
    // iprev and 127.0.0.2 fails it; `iprev_through_dns` below takes the DNS path.
    let mut zones = common_zones(&record);
    zones.extend([
        (
            "forged.example",
            zone(
                "forged.example",
                &format!("@ IN TXT {outside}\n_dmarc IN TXT \"v=DMARC1; p=reject\""),
            ),
        ),
        (
            "quar.example",
            zone(
                "quar.example",
                &format!("@ IN TXT {outside}\n_dmarc IN TXT \"v=DMARC1; p=quarantine\""),
            ),
        ),
        (
            "spfonly.example",
            zone("spfonly.example", &format!("@ IN TXT {outside}")),
        ),
    ]);
    let zone_refs: Vec<(&str, &str)> = zones.iter().map(|(o, z)| (*o, z.as_str())).collect();
    let knot = Knot::start(&d.join("knot"), &zone_refs);
    let config = config(d, "").replace(
        "[sender_checks]\nenabled = false",
        "[sender_checks]\nenabled = true\niprev_fail = \"reject\"",
    ) + &format!("\n[dns]\nnameservers = [\"{}\"]\n", knot.address);
    let server = Server::start(d, &config);

    // Aligned SPF and DKIM: accepted, with the results on top.
    let signed = message(d, "a@good.example", "good", Some((&key, "good.example")));
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

    // From 127.0.0.2, whose reverse name (localhost.) does not resolve back to it: 5.7.25
    // (iprev_fail = "reject").
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
    let broken = message(d, "a@good.example", "broken", Some((&key, "good.example")))
        .replace("hello", "HELLO");
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
    let sealed = dkimpy(
        d,
        SEAL,
        "Authentication-Results: forwarder.good.example; spf=pass smtp.mailfrom=a@good.example\r\n\
         From: a@good.example\r\nSubject: sealed\r\nDate: Sun, 22 Nov 2026 20:00:00 +0000\r\n\r\nhello\r\n",
        &key,
        &["good.example", "forwarder.good.example"],
    );
    let reply = send(&server, "a@good.example", &sealed);
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply}");
    let sealed = queue_id_in(&reply);

    // Forwarded: SPF fails for the forwarder's envelope, but the aligned DKIM signature of the
    // From domain makes DMARC pass, so it is accepted.
    let forwarded = message(
        d,
        "a@good.example",
        "forwarded",
        Some((&key, "good.example")),
    );
    let reply = send(&server, "list@spfonly.example", &forwarded);
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply}");
    let forwarded = queue_id_in(&reply);

    // The refusals at the end of DATA, counted: DMARC 5.7.1, SPF 5.7.23, iprev 5.7.25, and
    // the DNS failure 4.7.24.
    let (_, metrics) = server.cli(&["metrics"]);
    for (check, code) in [
        ("dmarc", "5.7.1"),
        ("spf", "5.7.23"),
        ("iprev", "5.7.25"),
        ("sender_auth", "4.7.24"),
    ] {
        let line = format!(
            "smtp_rejections_total{{stage=\"data\",check=\"{check}\",code=\"{code}\"}} 1\n"
        );
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

/// The reply to MAIL FROM from 127.0.0.1.
fn mail_from(server: &Server, sender: &str) -> String {
    let mut c = RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.good.example");
    let reply = c.command(&format!("MAIL FROM:<{sender}>"));
    c.command("QUIT");
    reply.trim_end().to_owned()
}

/// The zones the tests here share: the parent zone (DMARC's tree walk asks _dmarc.example,
/// which must say NXDOMAIN, as a real TLD does, not REFUSED) and good.example, whose SPF
/// allows 127.0.0.0/8 and which publishes DMARC p=reject and the key `record` at s1.
fn common_zones(record: &str) -> Vec<(&'static str, String)> {
    vec![
        ("example", zone("example", "")),
        (
            "good.example",
            zone(
                "good.example",
                &format!(
                    "@ IN TXT \"v=spf1 ip4:127.0.0.0/8 -all\"\n_dmarc IN TXT \"v=DMARC1; p=reject\"\n\
                     s1._domainkey IN TXT {}",
                    txt(record)
                ),
            ),
        ),
    ]
}

#[test]
fn a_lookup_that_fails_for_now_is_a_451_never_a_guess() {
    use crate::dns::{Fault, Faulty};
    let test = "a_lookup_that_fails_for_now_is_a_451_never_a_guess";
    if !have("knotd", test) || !have("/usr/bin/python3", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, record) = dkim_key(d, "s1", "rsa");
    let outside = "\"v=spf1 ip4:192.0.2.0/24 -all\"";
    let mut zones = common_zones(&record);
    zones.extend([
        (
            "signed.example",
            zone(
                "signed.example",
                &format!(
                    "@ IN TXT {outside}\n_dmarc IN TXT \"v=DMARC1; p=reject\"\ns1._domainkey IN TXT {}",
                    txt(&record)
                ),
            ),
        ),
        ("spfonly.example", zone("spfonly.example", &format!("@ IN TXT {outside}"))),
        ("slow.example", zone("slow.example", &format!("@ IN TXT {outside}"))),
    ]);
    let zone_refs: Vec<(&str, &str)> = zones.iter().map(|(o, z)| (*o, z.as_str())).collect();
    let knot = Knot::start(&d.join("knot"), &zone_refs);
    // Knot answers everything; in front of it, signed.example's DKIM key fails with SERVFAIL,
    // and slow.example's SPF record never comes.
    let faulty = Faulty::start(
        knot.address,
        &[
            ("s1._domainkey.signed.example", 16, Fault::ServFail),
            ("slow.example", 16, Fault::Silence),
        ],
    );
    let config = config(d, "").replace(
        "[sender_checks]\nenabled = false",
        "[sender_checks]\nenabled = true\nspf_at_mail = true",
    ) + &format!(
        "\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"1s\"\nattempts = 1\n",
        faulty.address
    );
    let server = Server::start(d, &config);

    // SPF at MAIL FROM: a fail is refused there, and a record that cannot be had is a 451.
    assert_eq!(
        mail_from(&server, "a@spfonly.example"),
        "550 5.7.23 SPF check failed: spfonly.example does not allow this client to send its mail"
    );
    assert_eq!(
        mail_from(&server, "a@slow.example"),
        "451 4.7.24 Sender authentication could not be completed (DNS), try again later"
    );

    // A signature whose key cannot be fetched might have made DMARC pass: 451...
    let signed = message(d, "a@signed.example", "key", Some((&key, "signed.example")));
    let reply = send(&server, "list@good.example", &signed);
    assert!(
        reply.starts_with("451 4.7.24 Sender authentication could not be completed"),
        "{reply}\n{}",
        server.log()
    );
    // ...where the same message without it is a DMARC fail.
    let unsigned = message(d, "a@signed.example", "nokey", None);
    let reply = send(&server, "list@good.example", &unsigned);
    assert!(
        reply.starts_with("550 5.7.1 Message rejected by the DMARC policy of signed.example"),
        "{reply}"
    );
    let log = server.log();
    assert!(
        log.contains("dkim=temperror") || log.contains("dkim=fail"),
        "{log}"
    );
    let (_, metrics) = server.cli(&["metrics"]);
    for (stage, check, code, count) in [
        ("mail", "spf", "5.7.23", 1),
        ("mail", "sender_auth", "4.7.24", 1),
        ("data", "sender_auth", "4.7.24", 1),
        ("data", "dmarc", "5.7.1", 1),
    ] {
        let line = format!(
            "smtp_rejections_total{{stage=\"{stage}\",check=\"{check}\",code=\"{code}\"}} {count}\n"
        );
        assert!(metrics.contains(&line), "{line}: {metrics}");
    }
    server.stop();
    assert!(queued(d).is_empty());
}

#[test]
fn a_trusted_forwarders_arc_chain_forgives_a_dmarc_fail() {
    let test = "a_trusted_forwarders_arc_chain_forgives_a_dmarc_fail";
    if !have("knotd", test) || !have("/usr/bin/python3", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, record) = dkim_key(d, "s1", "rsa");
    let mut zones = common_zones(&record);
    zones.extend([
        // Seals as well as good.example can, but is not trusted.
        (
            "other.example",
            zone(
                "other.example",
                &format!("s1._domainkey IN TXT {}", txt(&record)),
            ),
        ),
        (
            "strict.example",
            zone(
                "strict.example",
                "@ IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"\n_dmarc IN TXT \"v=DMARC1; p=reject\"",
            ),
        ),
    ]);
    let zone_refs: Vec<(&str, &str)> = zones.iter().map(|(o, z)| (*o, z.as_str())).collect();
    let knot = Knot::start(&d.join("knot"), &zone_refs);
    let config = config(d, "").replace(
        "[sender_checks]\nenabled = false",
        "[sender_checks]\nenabled = true\ntrusted_arc_sealers = [\"good.example\"]",
    ) + &format!("\n[dns]\nnameservers = [\"{}\"]\n", knot.address);
    let server = Server::start(d, &config);

    // A mailing list at good.example got a@strict.example's message with DMARC passing,
    // changed it, and sends it on with its own envelope sender: DMARC fails here.
    let forwarded = |dmarc: &str, sealer: &str| {
        dkimpy(
            d,
            SEAL,
            &format!(
                "Authentication-Results: lists.{sealer}; dmarc={dmarc} header.from=strict.example\r\n\
                 From: a@strict.example\r\nSubject: [list] hello\r\n\
                 Date: Sun, 22 Nov 2026 20:00:00 +0000\r\n\r\nhello\r\n-- \r\nthe list\r\n"
            ),
            &key,
            &[sealer, &format!("lists.{sealer}")],
        )
    };
    // Sealed by the trusted forwarder, which saw DMARC pass: accepted.
    let reply = send(
        &server,
        "list@good.example",
        &forwarded("pass", "good.example"),
    );
    assert!(
        reply.starts_with("250 2.0.0 Ok: queued as"),
        "{reply}\n{}",
        server.log()
    );
    let vouched = queue_id_in(&reply);
    // The trusted forwarder saw DMARC fail: refused.
    let reply = send(
        &server,
        "list@good.example",
        &forwarded("fail", "good.example"),
    );
    assert!(
        reply.starts_with("550 5.7.1 Message rejected by the DMARC policy of strict.example"),
        "{reply}"
    );
    // A valid chain, but by a forwarder nobody trusts: refused.
    let reply = send(
        &server,
        "list@good.example",
        &forwarded("pass", "other.example"),
    );
    assert!(
        reply.starts_with("550 5.7.1 Message rejected by the DMARC policy of strict.example"),
        "{reply}"
    );
    // The trusted forwarder's seal over a message changed after sealing: the chain fails.
    let broken = forwarded("pass", "good.example").replace("the list", "the spammer");
    let reply = send(&server, "list@good.example", &broken);
    assert!(
        reply.starts_with("550 5.7.1 Message rejected by the DMARC policy of strict.example"),
        "{reply}"
    );

    let log = server.log();
    assert!(log.contains("arc.sealer=good.example"), "{log}");
    let messages = queued(d);
    server.stop();
    assert_eq!(messages.len(), 1);
    let (id, _, body) = &messages[0];
    assert_eq!(*id, vouched);
    let body = String::from_utf8_lossy(body);
    for result in ["arc=pass", "dmarc=fail"] {
        assert!(body.contains(result), "{result}: {body}");
    }
}

/// Forward-confirmed reverse DNS through the resolver and a real nameserver. Clients on
/// loopback never take this path (see above), so the checker is asked directly about
/// documentation addresses (RFC 5737), which nothing binds: 192.0.2.1 names a host that
/// resolves back to it, 192.0.2.2 one that does not, and 192.0.2.3's PTR query fails.
#[test]
fn iprev_through_dns() {
    use crate::dns::{Fault, Faulty};
    use backstop_filter::sender_auth::{Action, Actions, Client, Outcome, Refusal, SenderAuth};
    let test = "iprev_through_dns";
    if !have("knotd", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let zones = [
        ("example", zone("example", "")),
        (
            "2.0.192.in-addr.arpa",
            zone(
                "2.0.192.in-addr.arpa",
                "1 IN PTR host.good.example.\n2 IN PTR liar.good.example.\n3 IN PTR host.good.example.",
            ),
        ),
        (
            "good.example",
            zone(
                "good.example",
                "@ IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"\nhost IN A 192.0.2.1\nliar IN A 192.0.2.9",
            ),
        ),
    ];
    let zone_refs: Vec<(&str, &str)> = zones.iter().map(|(o, z)| (*o, z.as_str())).collect();
    let knot = Knot::start(&d.join("knot"), &zone_refs);
    let faulty = Faulty::start(
        knot.address,
        &[("3.2.0.192.in-addr.arpa", 12, Fault::ServFail)],
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let resolver = backstop_filter::dns::resolver(&backstop_filter::dns::Settings {
        nameservers: vec![faulty.address],
        ..Default::default()
    })
    .unwrap();
    let checker = |iprev_fail| {
        SenderAuth::new(
            resolver.clone(),
            "mx.backstop.test",
            Actions {
                iprev_fail,
                ..Actions::default()
            },
        )
    };
    let sender = backstop_types::ReversePath::Address(
        backstop_types::Address::parse("a@good.example").unwrap(),
    );
    let check = |auth: &SenderAuth, ip: &str| {
        let client = Client {
            ip: ip.parse().unwrap(),
            helo: "host.good.example",
            sender: &sender,
        };
        let message = b"From: a@good.example\r\nSubject: x\r\n\r\nx\r\n";
        runtime.block_on(auth.check(&client, message))
    };
    let strict = checker(Action::Reject);
    let passed = check(&strict, "192.0.2.1");
    assert_eq!(passed.outcome, Outcome::Accept, "{}", passed.summary);
    assert!(passed.header.contains("iprev=pass"), "{}", passed.header);
    assert!(
        passed.header.contains("policy.iprev=192.0.2.1"),
        "{}",
        passed.header
    );
    let liar = check(&strict, "192.0.2.2");
    assert_eq!(
        liar.outcome,
        Outcome::Refuse(Refusal::Iprev {
            ip: "192.0.2.2".parse().unwrap()
        }),
        "{}",
        liar.summary
    );
    // A lookup that fails for now is a 451 where iprev decides...
    let unknown = check(&strict, "192.0.2.3");
    assert_eq!(unknown.outcome, Outcome::TempFail, "{}", unknown.summary);
    assert!(
        unknown.summary.contains("iprev=temperror"),
        "{}",
        unknown.summary
    );
    // ...and only recorded where it does not (the default).
    let lenient = checker(Action::Accept);
    let recorded = check(&lenient, "192.0.2.3");
    assert_eq!(recorded.outcome, Outcome::Accept, "{}", recorded.summary);
    assert!(
        recorded.header.contains("iprev=temperror"),
        "{}",
        recorded.header
    );
    let quarantined = check(&checker(Action::Quarantine), "192.0.2.2");
    assert_eq!(
        quarantined.outcome,
        Outcome::Quarantine(backstop_types::quarantine::Reason::content(
            "iprev",
            "",
            "no forward-confirmed reverse DNS for 192.0.2.2"
        ))
    );
}

/// A message larger than `max_scan_size` is not read for DKIM, but padding a forgery past the
/// limit gains nothing: SPF and DMARC (by SPF alignment) still judge it. A forged sender of a
/// p=reject domain goes to quarantine (no signature was verified, so no proof either way),
/// never delivered; an aligned SPF pass is accepted with its results and the note on top.
#[test]
fn a_message_padded_past_max_scan_size_is_still_judged_by_spf_and_dmarc() {
    let test = "a_message_padded_past_max_scan_size_is_still_judged_by_spf_and_dmarc";
    if !have("knotd", test) || !have("/usr/bin/python3", test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_key, record) = dkim_key(d, "s1", "rsa");
    let mut zones = common_zones(&record);
    zones.push((
        "forged.example",
        zone(
            "forged.example",
            "@ IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"\n_dmarc IN TXT \"v=DMARC1; p=reject\"",
        ),
    ));
    let zone_refs: Vec<(&str, &str)> = zones.iter().map(|(o, z)| (*o, z.as_str())).collect();
    let knot = Knot::start(&d.join("knot"), &zone_refs);
    let config = config(d, "spool_threshold = \"64K\"").replace(
        "[sender_checks]\nenabled = false",
        "[sender_checks]\nenabled = true\nspf_fail = \"accept\"",
    ) + &format!(
        "\n[dns]\nnameservers = [\"{}\"]\n\n[content]\nmax_scan_size = \"100K\"\n",
        knot.address
    );
    let server = Server::start(d, &config);
    let padding = format!("{}\r\n", "p".repeat(76)).repeat(4000);
    let padded = |from: &str, subject: &str| {
        message(d, from, subject, None).replace("\r\n\r\nhello\r\n", &format!("\r\n\r\n{padding}"))
    };

    let reply = send(
        &server,
        "a@forged.example",
        &padded("a@forged.example", "forged"),
    );
    assert!(reply.starts_with("250"), "{reply}\n{}", server.log());
    let reason = server.quarantined(queue_id_in(&reply));
    assert!(
        reason.contains("fails on SPF alone; DKIM not verified"),
        "{reason}"
    );

    let reply = send(&server, "a@good.example", &padded("a@good.example", "good"));
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply}");
    let id = queue_id_in(&reply);
    let (_, _, body) = queued(d).into_iter().find(|(i, _, _)| *i == id).unwrap();
    let text = String::from_utf8_lossy(&body);
    let header = &text[..text.find("\r\n\r\n").unwrap()];
    assert!(header.contains("spf=pass"), "{header}");
    assert!(header.contains("dmarc=pass"), "{header}");
    assert!(header.contains("larger than max_scan_size"), "{header}");
    server.stop();
}
