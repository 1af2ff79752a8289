//! No open relay: unauthenticated mail to a foreign domain is refused on every listener, with
//! and without TLS, including the address tricks relays have been fooled by.

use std::process::Command;

use crate::harness::{config, have, queued, Server};

const PROBE: &str = r#"
import smtplib, ssl, sys
host = sys.argv[1]
ports = {"mx": int(sys.argv[2]), "submission": int(sys.argv[3]), "submissions": int(sys.argv[4])}
tricks = [
    "victim@elsewhere.example",
    "victim%elsewhere.example@example.test",
    "elsewhere.example!victim@example.test",
    '"victim@elsewhere.example"@example.test',
    "@example.test:victim@elsewhere.example",
    "VICTIM@ELSEWHERE.EXAMPLE",
    "victim@elsewhere.example.",
]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
for name, port, tls in [("mx", ports["mx"], "none"), ("mx", ports["mx"], "starttls"),
                        ("submission", ports["submission"], "none"),
                        ("submission", ports["submission"], "starttls"),
                        ("submissions", ports["submissions"], "implicit")]:
    for rcpt in tricks:
        if tls == "implicit":
            s = smtplib.SMTP_SSL(host, port, context=ctx, timeout=20)
        else:
            s = smtplib.SMTP(host, port, timeout=20)
        s.ehlo("probe.example")
        if tls == "starttls":
            s.starttls(context=ctx)
            s.ehlo("probe.example")
        code, _ = s.mail("spammer@example.org")
        if code == 250:
            code, _ = s.docmd("RCPT TO:<%s>" % rcpt)
            stage = "rcpt"
        else:
            stage = "mail"
        print(name, tls, rcpt, stage, code)
        s.quit()
"#;

#[test]
fn no_listener_relays_for_strangers() {
    if !have("/usr/bin/python3", "no_listener_relays_for_strangers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let out = Command::new("/usr/bin/python3")
        .args(["-c", PROBE, "127.0.0.1"])
        .arg(server.mx.port().to_string())
        .arg(server.submission.port().to_string())
        .arg(server.submissions.port().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5 * 7, "{stdout}");
    for line in &lines {
        let code: u16 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((500..600).contains(&code), "accepted: {line}");
        // Port 25 refuses the recipient; the submission ports refuse MAIL without AUTH.
        let expected = if line.starts_with("mx ") {
            " rcpt 5"
        } else {
            " mail 530"
        };
        assert!(line.contains(expected), "{line}");
    }
    let messages = queued(dir.path());
    server.stop();
    assert!(messages.is_empty());
}
