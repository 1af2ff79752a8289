//! The submission port with a real TLS client: Python's smtplib over OpenSSL.

use std::process::Command;

use backstop_types::TrustClass;

use crate::harness::{config, have, queued, Server};

const CLIENT: &str = r#"
import smtplib, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
s = smtplib.SMTP(host, port, timeout=20)
s.ehlo("client.example")
print("before-tls auth offered:", s.has_extn("auth"))
print("before-tls starttls offered:", s.has_extn("starttls"))
code, _ = s.docmd("AUTH", "PLAIN AGFsaWNlAHNlY3JldA==")
print("auth before tls:", code)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
print("tls:", s.sock.version())
s.ehlo("client.example")
print("after-tls auth offered:", s.has_extn("auth"), s.esmtp_features.get("auth", "").strip())
try:
    s.login("alice", "wrong")
except smtplib.SMTPAuthenticationError as e:
    print("wrong password:", e.smtp_code)
s.login("alice", "secret")
print("logged in")
refused = s.sendmail("alice@example.test", ["friend@elsewhere.example"],
                     "From: alice@example.test\r\nTo: friend@elsewhere.example\r\nSubject: via submission\r\n\r\nhi\r\n")
print("refused:", refused)
s.quit()
"#;

#[test]
fn starttls_then_auth_then_relay() {
    if !have("/usr/bin/python3", "starttls_then_auth_then_relay") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let out = Command::new("/usr/bin/python3")
        .args(["-c", CLIENT])
        .arg(server.submission.ip().to_string())
        .arg(server.submission.port().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client failed:\n{stdout}\n{stderr}\n{}",
        server.log()
    );
    let expected = [
        "before-tls auth offered: False",
        "before-tls starttls offered: True",
        "auth before tls: 538",
        "tls: TLSv1.3",
        "after-tls auth offered: True PLAIN LOGIN",
        "wrong password: 535",
        "logged in",
        "refused: {}",
    ];
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, expected);

    let messages = queued(dir.path());
    server.stop();
    assert_eq!(messages.len(), 1);
    let (_, envelope, body) = &messages[0];
    assert_eq!(
        envelope.trust,
        TrustClass::Authenticated {
            user: "alice".into()
        }
    );
    assert_eq!(envelope.client.tls.as_ref().unwrap().version, "TLSv1.3");
    let body = String::from_utf8_lossy(body);
    // RFC 3848: ESMTPSA for TLS plus AUTH, and the TLS details.
    assert!(body.contains("\t(using TLSv1.3 with cipher "), "{body}");
    assert!(
        body.contains("\t(Authenticated sender: alice)\r\n"),
        "{body}"
    );
    assert!(body.contains(" with ESMTPSA\r\n"), "{body}");
}

#[test]
fn submission_refuses_mail_without_auth() {
    if !have("swaks", "submission_refuses_mail_without_auth") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let out = Command::new("swaks")
        .args(["--server", &server.submission.to_string(), "--tls"])
        .args(["--from", "alice@example.test", "--to", "user@example.test"])
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        transcript.contains("<~* 530 5.7.0 Authentication required"),
        "{transcript}"
    );
    server.stop();
}

const IMPLICIT_TLS_CLIENT: &str = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP_SSL(sys.argv[1], int(sys.argv[2]), context=ctx, timeout=20)
s.ehlo("client.example")
print("tls:", s.sock.version())
print("starttls offered:", s.has_extn("starttls"))
print("auth offered:", s.esmtp_features.get("auth", "").strip())
s.login("alice", "secret")
print("refused:", s.sendmail("alice@example.test", ["friend@elsewhere.example"], "Subject: 465\r\n\r\nhi\r\n"))
s.quit()
"#;

#[test]
fn implicit_tls_submission() {
    if !have("/usr/bin/python3", "implicit_tls_submission") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let out = Command::new("/usr/bin/python3")
        .args(["-c", IMPLICIT_TLS_CLIENT])
        .arg(server.submissions.ip().to_string())
        .arg(server.submissions.port().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "tls: TLSv1.3",
            "starttls offered: False",
            "auth offered: PLAIN LOGIN",
            "refused: {}"
        ]
    );
    let messages = queued(dir.path());
    server.stop();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].1.client.listener, "submissions");
    assert!(String::from_utf8_lossy(&messages[0].2).contains(" with ESMTPSA\r\n"));
}

#[test]
fn authenticated_users_send_only_as_themselves() {
    if !have("swaks", "authenticated_users_send_only_as_themselves") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &config(dir.path(), ""));
    let swaks = |from: &str| server.submit_as_alice(from, "friend@elsewhere.example", &[]);
    // alice owns alice@<each local domain> (the harness lists no addresses for her).
    let forged = swaks("ceo@example.test");
    assert!(
        forged.contains("<~* 553 5.7.1 Sender address rejected: not owned by user alice"),
        "{forged}"
    );
    let own = swaks("alice@example.test");
    assert!(own.contains("<~  250 2.0.0 Ok: queued as "), "{own}");
    let messages = queued(dir.path());
    server.stop();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].1.sender.to_string(), "<alice@example.test>");
}
