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
    let zones = [
        ("example", zone("example", "")),
        (
            "good.example",
            zone(
                "good.example",
                &format!(
                    "@ IN TXT \"v=spf1 ip4:127.0.0.0/8 -all\"\n_dmarc IN TXT \"v=DMARC1; p=reject\"\ns1._domainkey IN TXT {}",
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
        "[sender_checks]\nenabled = true",
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

    // Forwarded: SPF fails for the forwarder's envelope, but the aligned DKIM signature of the
    // From domain makes DMARC pass, so it is accepted.
    let forwarded = message(d, "a@good.example", "forwarded", Some(&key));
    let reply = send(&server, "list@spfonly.example", &forwarded);
    assert!(reply.starts_with("250 2.0.0 Ok: queued as"), "{reply}");
    let forwarded = queue_id_in(&reply);

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
        "dkim=pass",
        "spf=pass",
        "dmarc=pass",
        "header.i=@good.example",
    ] {
        assert!(good.contains(result), "{result}: {good}");
    }
    let forwarded = body(forwarded);
    for result in ["dkim=pass", "spf=fail", "dmarc=pass"] {
        assert!(forwarded.contains(result), "{result}: {forwarded}");
    }
    // Nothing else was queued: the refused ones are not, the quarantined one is apart.
    assert_eq!(messages.len(), 2);
}
