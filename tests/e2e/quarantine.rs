//! The quarantine as people use it: the administrator's console and the recipients' release
//! pages driven in a real browser (Debian's chromium through chromedriver), digests verified
//! by an independent DKIM verifier (dkimpy, Mail::DKIM, OpenDKIM) with every message-derived
//! string escaped, and release links that cannot be forged, reused for another recipient, or
//! made at all for a copy the administrator owns (a suppressed report).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use backstop_queue::{HeldState, Queue};
use backstop_types::quarantine::{Owner, Reason};
use backstop_types::{Address, QueueId};

use crate::browser::Browser;
use crate::harness::{config, free_port, have, python, Server};

const TOKEN: &str = "console-token-0123456789abcdef";

/// A config with delivery on (local mail into the Maildir), a body rule that quarantines,
/// the admin console on HTTP, the release pages, and digests sent only when asked.
fn quarantine_config(dir: &Path, admin: u16, web: u16, extra: &str) -> String {
    let token = dir.join("admin.token");
    std::fs::write(&token, TOKEN).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let own = format!(
        r#"
[admin]
http = "127.0.0.1:{admin}"
token_file = "{token}"

[quarantine]
web = "127.0.0.1:{web}"
url = "http://127.0.0.1:{web}"
digest = "off"

[[filter]]
type = "body"
pattern = "(?i)wire the money"
action = "quarantine"
{extra}
"#,
        token = token.display(),
    );
    config(dir, "").replace("[delivery]\npaused = true", "[delivery]\npaused = false") + &own
}

/// Sends a message the body rule quarantines, from `from` (its header From and Subject as
/// given) to `to`; returns the queue id of the 250.
fn send_held(
    server: &Server,
    from: &str,
    header_from: &str,
    subject: &str,
    to: &[&str],
) -> QueueId {
    let mut c = crate::harness::RawClient::connect(server.mx);
    c.reply();
    c.command("EHLO client.example");
    assert!(c.command(&format!("MAIL FROM:<{from}>")).starts_with("250"));
    for rcpt in to {
        let reply = c.command(&format!("RCPT TO:<{rcpt}>"));
        assert!(reply.starts_with("250"), "{rcpt}: {reply}");
    }
    assert!(c.command("DATA").starts_with("354"));
    c.send(
        format!(
            "From: {header_from}\r\nTo: someone@example.test\r\nSubject: {subject}\r\n\
             Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{}@sender.example>\r\n\r\n\
             Please wire the money today.\r\n.\r\n",
            free_port()
        )
        .as_bytes(),
    );
    let reply = c.reply();
    assert!(reply.starts_with("250"), "{reply}");
    c.command("QUIT");
    crate::harness::queue_id_in(&reply)
}

/// Waits until the page the browser shows satisfies `ready` (a click navigates in the
/// background: the old page may still be there).
fn settle(browser: &Browser, ready: impl Fn(&Browser) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !ready(browser) {
        assert!(
            std::time::Instant::now() < deadline,
            "the page never came: {}\n{}",
            browser.current_url(),
            browser.source()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain HTTP/1.1 exchange: (status, body).
fn http(address: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer[9..12].parse().unwrap();
    (status, answer)
}

/// The held state of each recipient of quarantined message `id`, read from disk.
fn held(dir: &Path, id: QueueId) -> Vec<(String, HeldState)> {
    let queue = Queue::open_read_only(&dir.join("var/queue")).unwrap();
    let Some(record) = queue.quarantine_record(id).unwrap() else {
        return Vec::new();
    };
    record
        .envelope
        .recipients
        .iter()
        .zip(&record.held)
        .map(|(r, h)| (r.address.to_string(), h.state))
        .collect()
}

/// The digest's parts, decoded by Python's email package: (text, html).
fn digest_parts(message: &str) -> (String, String) {
    let script = r#"
import sys, email, email.policy
m = email.message_from_string(open(sys.argv[1]).read(), policy=email.policy.default)
text = m.get_body(("plain",)).get_content()
html = m.get_body(("html",)).get_content()
sys.stdout.write(text + "\n=====HTML=====\n" + html)
"#;
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), message).unwrap();
    let out = python(script, &[&file.path().display().to_string()]);
    let (text, html) = out.split_once("\n=====HTML=====\n").unwrap();
    (text.to_owned(), html.to_owned())
}

/// A token as the server makes them, signed here with the server's own key file: what only
/// someone with the key could make (to test what the pages do with a valid signature over
/// claims the server would never sign).
fn forge(dir: &Path, queue_id: QueueId, recipient: &str, expires: u64) -> String {
    let key = dir.join("var/quarantine/0.key");
    let script = r#"
import sys, hmac, hashlib, base64, struct
secret = open(sys.argv[1], "rb").read().strip()
qid, rcpt, expires = int(sys.argv[2]), sys.argv[3].encode(), int(sys.argv[4])
raw = bytes([1, 0]) + struct.pack(">QQ", qid, expires) + bytes([7]) + struct.pack(">H", len(rcpt)) + rcpt
raw += hmac.new(secret, raw, hashlib.sha256).digest()[:16]
sys.stdout.write(base64.urlsafe_b64encode(raw).decode().rstrip("="))
"#;
    python(
        script,
        &[
            &key.display().to_string(),
            &queue_id.0.to_string(),
            recipient,
            &expires.to_string(),
        ],
    )
}

/// An envelope as the listener records one, for a message to `to`.
fn envelope_for(to: &str) -> backstop_types::Envelope {
    use backstop_types::*;
    Envelope {
        sender: ReversePath::Null,
        recipients: vec![Recipient {
            address: Address::parse(to).unwrap(),
            notify: Notify::Default,
            orcpt: None,
        }],
        dsn: DsnParams {
            ret: None,
            envid: None,
        },
        body_type: BodyType::SevenBit,
        smtputf8: false,
        client: ClientInfo {
            ip: "192.0.2.7".parse().unwrap(),
            helo: "client.example".into(),
            ptr: None,
            tls: None,
            auth: None,
            listener: "mx".into(),
        },
        arrival: UnixTime(now()),
        trust: TrustClass::Unverified,
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The console (log in, find by sender, release to one recipient), the digest's release link
/// (a GET changes nothing, the POST releases), refused tokens, and delivery into the Maildir.
#[test]
fn the_console_and_a_release_link_release_mail_in_a_real_browser() {
    let test = "the_console_and_a_release_link_release_mail_in_a_real_browser";
    if !have("python3", test) {
        return;
    }
    let Some(browser) = Browser::start(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (admin_port, web_port) = (free_port(), free_port());
    let server = Server::start(d, &quarantine_config(d, admin_port, web_port, ""));
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let web: SocketAddr = format!("127.0.0.1:{web_port}").parse().unwrap();

    // Two held messages; the one to find is from the scammer, to alice and bob.
    send_held(
        &server,
        "news@other.example",
        "news@other.example",
        "newsletter",
        &["alice@example.test"],
    );
    let id = send_held(
        &server,
        "scammer@sender.example",
        "Scammer <scammer@sender.example>",
        "urgent",
        &["alice@example.test", "bob@example.test"],
    );
    server.quarantined(id);

    // The console: a wrong token is refused, the right one logs in.
    browser.goto(&format!("http://{admin}/"));
    browser.find("#token").send_keys("not-the-token-at-all");
    browser.find("#login").click();
    let note = browser.wait_for(".note", Duration::from_secs(10)).text();
    assert!(note.contains("not the admin token"), "{note}");
    browser.find("#token").send_keys(TOKEN);
    browser.find("#login").click();
    browser.wait_for("nav", Duration::from_secs(10));
    assert!(browser.source().contains("Backscatter prevented"));
    let cookies = browser.cookies();
    let session = cookies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "backstop_console")
        .expect("a session cookie");
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    browser.goto(&format!("http://{admin}/quarantine"));
    browser.find("#sender").send_keys("scammer@");
    browser.find("#search").click();
    settle(&browser, |b| b.current_url().contains("sender=scammer"));
    assert_eq!(
        browser.find("#sender").property("value").as_deref(),
        Some("scammer@"),
        "the search stays in its field"
    );
    let rows = browser.find_all("a.message");
    assert_eq!(rows.len(), 1, "{}", browser.source());
    assert_eq!(rows[0].text(), id.to_string());
    // By date: held since 2000, yes; before 2000, nothing.
    browser.goto(&format!(
        "http://{admin}/quarantine?sender=scammer&since=2000-01-01"
    ));
    assert_eq!(browser.find_all("a.message").len(), 1);
    browser.goto(&format!(
        "http://{admin}/quarantine?sender=scammer&until=2000-01-01"
    ));
    assert!(browser.find_all("a.message").is_empty());
    browser.goto(&format!("http://{admin}/quarantine?sender=scammer"));
    let rows = browser.find_all("a.message");
    rows[0].click();
    settle(&browser, |b| {
        b.current_url().ends_with(&format!("/quarantine/{id}"))
    });
    // Release to alice only.
    let buttons = browser.find_all("form button");
    let alice = buttons
        .iter()
        .find(|b| b.text() == "Release to alice@example.test")
        .expect("a button per held recipient");
    alice.click();
    let notice = browser.wait_for("#notice", Duration::from_secs(10)).text();
    assert!(notice.contains("released into the queue"), "{notice}");
    assert!(notice.contains("alice@example.test"), "{notice}");
    let delivered = server.local_mailbox("example.test/alice", 1);
    assert!(delivered[0].contains("Subject: urgent"), "{}", delivered[0]);
    let states = held(d, id);
    assert!(matches!(states[0].1, HeldState::Released(_)), "{states:?}");
    assert_eq!(states[1].1, HeldState::Held);

    // The allow-list, from the console.
    browser.goto(&format!("http://{admin}/allow"));
    browser
        .find("#allow-recipient")
        .send_keys("alice@example.test");
    browser.find("#allow-sender").send_keys("@partner.example");
    browser.find("#allow").click();
    let notice = browser.wait_for("#notice", Duration::from_secs(10)).text();
    assert_eq!(notice, "Done: allow.");
    let (_, allowed) = server.cli(&["quarantine", "allowed"]);
    assert!(
        allowed.contains("alice@example.test <- @partner.example"),
        "{allowed}"
    );
    browser.goto(&format!("http://{admin}/allow"));
    assert!(browser.source().contains("@partner.example"));

    // Another site's page cannot use the console: by its name (DNS rebinding: the Host is
    // its own), or by a form posted from it.
    let raw = |request: String| {
        let mut stream = TcpStream::connect(admin).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    let rebound = raw("GET / HTTP/1.1\r\nHost: evil.example:8025\r\n\r\n".into());
    assert!(rebound.starts_with("HTTP/1.1 421 "), "{rebound}");
    let body = format!("token={TOKEN}");
    for header in ["Origin: http://evil.example", "Sec-Fetch-Site: cross-site"] {
        let posted = raw(format!(
            "POST /login HTTP/1.1\r\nHost: {admin}\r\n{header}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        assert!(posted.starts_with("HTTP/1.1 403 "), "{header}: {posted}");
        assert!(!posted.contains("Set-Cookie"), "{posted}");
    }

    // A form from elsewhere (no CSRF token of this session) does nothing.
    let (status, _) = http(admin, "POST", &format!("/quarantine/{id}"), "action=delete");
    assert_eq!(status, 401, "no session: the login page");

    // Bob's digest lists his copy with a release link; alice's lists only her newsletter
    // (her copy of the other was released).
    let (ok, out) = server.cli(&["quarantine", "digest"]);
    assert!(ok, "{out}");
    let digest = &server.local_mailbox("example.test/bob", 1)[0];
    let (text, _) = digest_parts(digest);
    assert!(text.contains("urgent"), "{text}");
    let link = text
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("a release link")
        .to_owned();
    let path = link
        .strip_prefix(&format!("http://{web}"))
        .unwrap()
        .to_owned();

    // A GET shows the message and changes nothing, however often a scanner follows it.
    for _ in 0..3 {
        let (status, page) = http(web, "GET", &path, "");
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("Cache-Control: no-store"), "{page}");
        assert!(page.contains("Referrer-Policy: no-referrer"), "{page}");
        assert!(
            page.contains("Content-Security-Policy: default-src 'none'"),
            "{page}"
        );
        assert!(!page.contains("Location:"), "{page}");
    }
    assert_eq!(held(d, id)[1].1, HeldState::Held, "a GET released nothing");

    // Tampered, expired and other-recipient tokens are refused; nothing changes.
    let token = path.strip_prefix("/release/").unwrap();
    let mut tampered = token.as_bytes().to_vec();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let (status, page) = http(
        web,
        "POST",
        &format!("/release/{tampered}"),
        "action=release",
    );
    assert_eq!(status, 403, "{page}");
    let expired = forge(d, id, "bob@example.test", now() - 1);
    let (status, page) = http(
        web,
        "POST",
        &format!("/release/{expired}"),
        "action=release",
    );
    assert_eq!(status, 403, "{page}");
    // Signed for a recipient this message does not have: nothing of bob's moves.
    let other = forge(d, id, "carol@example.test", now() + 3600);
    let (status, page) = http(web, "POST", &format!("/release/{other}"), "action=release");
    assert_eq!(status, 410, "{page}");
    // Alice's copy was released already: her (valid) token has nothing left to act on.
    let alices = forge(d, id, "alice@example.test", now() + 3600);
    let (status, page) = http(web, "POST", &format!("/release/{alices}"), "action=release");
    assert_eq!(status, 410, "{page}");
    assert_eq!(held(d, id)[1].1, HeldState::Held);

    // Bob follows his link in the browser and releases his copy.
    browser.goto(&link);
    assert_eq!(browser.title(), "Held message");
    assert!(browser.source().contains("urgent"), "{}", browser.source());
    assert_eq!(
        browser
            .find("form input[name=action]")
            .attribute("value")
            .as_deref(),
        Some("release")
    );
    browser.find("#release").click();
    settle(&browser, |b| b.source().contains("<h1>Released</h1>"));
    let bobs = server.local_mailbox("example.test/bob", 2);
    assert!(
        bobs.iter().any(|m| m.contains("Subject: urgent")),
        "{bobs:?}"
    );
    assert!(
        held(d, id).is_empty(),
        "nothing left held: the message left quarantine"
    );
    // The link is spent.
    let (status, _) = http(web, "GET", &path, "");
    assert_eq!(status, 410);

    let (_, metrics) = server.cli(&["metrics"]);
    assert!(
        metrics.contains("\nquarantine_released_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nquarantine_digests_sent_total 2"),
        "{metrics}"
    );
    drop(browser);
    server.stop();
}

/// A day's digest: DKIM-signed by the site's key (three independent verifiers pass it),
/// `Auto-Submitted`, every string from the held message escaped in its HTML, a virus listed
/// without a link, and a suppressed report's copy never listed and never given a working
/// link.
#[test]
fn a_digest_is_signed_escaped_and_never_lists_a_suppressed_report() {
    let test = "a_digest_is_signed_escaped_and_never_lists_a_suppressed_report";
    if !crate::dkim::have_verifiers(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key_file, record) = crate::mx::dkim_key(d, "digest", "rsa");
    let dkim = format!(
        "\n[[dkim]]\ndomain = \"example.test\"\nselector = \"q1\"\nkey_file = \"{}\"\n",
        key_file.display()
    );
    let (admin_port, web_port) = (free_port(), free_port());
    let config = quarantine_config(d, admin_port, web_port, &dkim);
    // A suppressed report's copy for a local mailbox, as delivery leaves it (written with the
    // queue's own call and the owner rule the server uses, before the server starts).
    std::fs::create_dir_all(d.join("var/queue")).unwrap();
    let suppressed = {
        let queue = Queue::open(&d.join("var/queue")).unwrap();
        let mut envelope = envelope_for("carol@example.test");
        envelope.sender =
            backstop_types::ReversePath::Address(Address::parse("forged@victim.example").unwrap());
        let reason =
            Reason::undeliverable("delivery failed: carol@example.test: 552 5.2.2 mailbox full");
        let owners = [reason.owner(true)];
        assert_eq!(owners, [Owner::Admin]);
        queue
            .quarantine_new(
                &envelope,
                &b"Subject: the suppressed one\r\n\r\nbody\r\n"
                    .to_vec()
                    .into(),
                &reason,
                &owners,
            )
            .unwrap()
    };
    let server = Server::start(d, &config);
    let hostile = send_held(
        &server,
        "evil@sender.example",
        "\"<script>alert('from')</script>\" <evil@sender.example>",
        "<script>alert('subject')</script> & <img src=http://tracker.example/x.png>",
        &["carol@example.test"],
    );
    server.quarantined(hostile);
    let (ok, out) = server.cli(&["quarantine", "digest"]);
    assert!(ok, "{out}");
    assert!(out.contains("1 digest(s) queued"), "{out}");
    let digest = server.local_mailbox("example.test/carol", 1)[0].clone();

    // Signed, and every verifier agrees.
    let file = d.join("digest.eml");
    let crlf = digest.replace("\r\n", "\n").replace('\n', "\r\n");
    std::fs::write(&file, &crlf).unwrap();
    let verdicts = crate::dkim::verify(
        d,
        std::slice::from_ref(&file),
        &[crate::dkim::PublicKey {
            name: "q1._domainkey.example.test".into(),
            record,
        }],
    );
    assert_eq!(verdicts.dkimpy, ["pass"], "{verdicts:?}");
    assert_eq!(verdicts.mail_dkim, ["pass"], "{verdicts:?}");
    assert_eq!(verdicts.opendkim, ["pass"], "{verdicts:?}");
    assert!(
        digest.contains("Auto-Submitted: auto-generated"),
        "{digest}"
    );
    assert!(
        digest.contains("From: \"Quarantine\" <postmaster@example.test>"),
        "{digest}"
    );

    let (text, html) = digest_parts(&digest);
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("<img"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(&#39;subject&#39;)&lt;/script&gt;"),
        "{html}"
    );
    assert!(
        html.contains("&lt;script&gt;alert(&#39;from&#39;)&lt;/script&gt;"),
        "{html}"
    );
    assert!(
        html.contains("hxxp[:]//tracker[.]example"),
        "links made inert: {html}"
    );
    assert!(!text.contains("http://tracker"), "{text}");
    assert!(
        !html.contains("tracker.example/x.png\""),
        "no live link from the message: {html}"
    );
    // The suppressed report is the administrator's alone.
    assert!(!text.contains("suppressed one"), "{text}");
    assert!(!html.contains("suppressed one"), "{html}");
    assert_eq!(text.matches("* ").count(), 1, "one item: {text}");

    // No link is ever made for it, and one made with our own key does not open it.
    let forged = forge(d, suppressed, "carol@example.test", now() + 3600);
    let web: SocketAddr = format!("127.0.0.1:{web_port}").parse().unwrap();
    let (status, page) = http(web, "GET", &format!("/release/{forged}"), "");
    assert_eq!(status, 410, "{page}");
    let (status, _) = http(web, "POST", &format!("/release/{forged}"), "action=release");
    assert_eq!(status, 410);
    assert_eq!(held(d, suppressed)[0].1, HeldState::Held);

    // Only new items: a second digest run lists nothing.
    let (ok, out) = server.cli(&["quarantine", "digest"]);
    assert!(ok && out.contains("0 digest(s) queued"), "{out}");
    server.stop();
}

/// The typed, paged API: filters and a cursor from the CLI, per-recipient release, the
/// allow-list letting a sender through at once, an administrator's hold, and the hostile
/// HTTP client that gets a clear error and never a crash.
#[test]
fn the_cli_pages_filters_releases_per_recipient_and_allow_lists() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (admin_port, web_port) = (free_port(), free_port());
    let server = Server::start(d, &quarantine_config(d, admin_port, web_port, ""));
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(send_held(
            &server,
            &format!("sender{i}@sender.example"),
            "x@sender.example",
            "held",
            &["alice@example.test", "bob@example.test"],
        ));
    }
    server.quarantined(ids[4]);
    let (ok, page) = server.cli(&["quarantine", "list", "--limit", "2"]);
    assert!(ok, "{page}");
    assert!(
        page.contains(&ids[0].to_string()) && page.contains(&ids[1].to_string()),
        "{page}"
    );
    assert!(!page.contains(&ids[2].to_string()), "{page}");
    assert!(
        page.contains(&format!("-- more: --after {}", ids[1])),
        "{page}"
    );
    let (_, next) = server.cli(&[
        "quarantine",
        "list",
        "--limit",
        "2",
        "--after",
        &ids[1].to_string(),
    ]);
    assert!(
        next.contains(&ids[2].to_string()) && !next.contains(&ids[0].to_string()),
        "{next}"
    );
    let (_, found) = server.cli(&[
        "quarantine",
        "list",
        "--from",
        "SENDER3@",
        "--kind",
        "content",
        "--json",
    ]);
    let found: serde_json::Value = serde_json::from_str(&found).unwrap();
    assert_eq!(found["items"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["items"][0]["id"], ids[3].to_string());
    assert_eq!(found["items"][0]["kind"], "content");
    assert_eq!(found["items"][0]["scanner"], "rule");
    assert_eq!(found["items"][0]["held"][0]["owner"], "recipient");
    let (ok, bad) = server.cli(&["quarantine", "list", "--kind", "spam"]);
    assert!(
        !ok && bad.contains("the kinds are content, dmarc, undeliverable and hold"),
        "{bad}"
    );

    // Release to bob only: alice's copy stays held.
    let (ok, out) = server.cli(&[
        "quarantine",
        "release",
        &ids[0].to_string(),
        "--to",
        "bob@example.test",
    ]);
    assert!(ok && out.contains("for bob@example.test"), "{out}");
    server.local_mailbox("example.test/bob", 1);
    assert_eq!(held(d, ids[0])[0].1, HeldState::Held);
    assert!(matches!(held(d, ids[0])[1].1, HeldState::Released(_)));

    // Alice allow-lists a sender: its next held message reaches her at once, bob's stays.
    let (ok, out) = server.cli(&[
        "quarantine",
        "allow",
        "alice@example.test",
        "@trusted.example",
    ]);
    assert!(ok, "{out}");
    let (_, listed) = server.cli(&["quarantine", "allowed"]);
    assert!(
        listed.contains("alice@example.test <- @trusted.example"),
        "{listed}"
    );
    let id = send_held(
        &server,
        "ceo@trusted.example",
        "ceo@trusted.example",
        "allowed",
        &["alice@example.test", "bob@example.test"],
    );
    let alices = server.local_mailbox("example.test/alice", 1);
    assert!(alices[0].contains("Subject: allowed"), "{alices:?}");
    let states = held(d, id);
    assert!(matches!(states[0].1, HeldState::Released(_)), "{states:?}");
    assert_eq!(states[1].1, HeldState::Held);

    // An administrator's hold moves a queued message into quarantine, the administrator's.
    let (ok, out) = server.cli(&["quarantine", "hold", "ALL"]);
    assert!(ok, "{out}");

    // Hostile HTTP on both listeners: clear errors, the server stays up.
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let web: SocketAddr = format!("127.0.0.1:{web_port}").parse().unwrap();
    for target in [admin, web] {
        for raw in [
            "GET /\0 HTTP/1.1\r\n\r\n".to_owned(),
            format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000)),
            "POST /v1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_owned(),
            "POST /v1 HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_owned(),
            "GET http://evil.example/ HTTP/1.1\r\n\r\n".to_owned(),
            "GET /release/%0d%0aSet-Cookie:x HTTP/1.1\r\n\r\n".to_owned(),
        ] {
            let mut stream = TcpStream::connect(target).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream.write_all(raw.as_bytes()).unwrap();
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            assert!(
                answer.starts_with("HTTP/1.1 4") || answer.starts_with("HTTP/1.1 5"),
                "{raw:?}: {answer}"
            );
            assert!(!answer.contains("\r\nSet-Cookie:x"), "{answer}");
        }
        // A silent client is dropped, and does not hold the listener.
        let _silent = TcpStream::connect(target).unwrap();
        let (status, _) = http(web, "GET", "/static/style.css", "");
        assert_eq!(status, 200);
    }
    let (ok, _) = server.cli(&["quarantine", "list"]);
    assert!(ok, "still serving:\n{}", server.log());
    server.stop();
}
