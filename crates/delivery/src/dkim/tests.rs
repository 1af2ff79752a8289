//! Tests of the key choice (users' mail by From domain, reports by the closest parent too) and
//! of the `DKIM-Signature:` field's layout. That the field verifies is checked with dkimpy,
//! Mail::DKIM and OpenDKIM in `tests/e2e/dkim.rs`.

use super::*;
use base64::Engine;

/// An Ed25519 key for `domain`, made by ring and stored as PEM under `dir`.
fn ed25519_key(dir: &Path, domain: &str) -> DomainKey {
    let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(pkcs8)
    );
    let file = dir.join(format!("{domain}.pem"));
    std::fs::write(&file, pem).unwrap();
    DomainKey::load(Domain::parse(domain).unwrap(), "s1", &file).unwrap()
}

/// The `d=` of a signature header field.
fn d_tag(header: &str) -> &str {
    let start = header.find(" d=").unwrap() + " d=".len();
    let end = start + header[start..].find(';').unwrap();
    &header[start..end]
}

fn report_from(host: &str) -> Vec<u8> {
    format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\nTo: alice@example.com\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\r\nsorry\r\n"
    )
    .into_bytes()
}

#[test]
fn the_from_domain_picks_the_key() {
    let message = b"From: Alice <alice@Example.TEST>\r\nTo: bob@example.net\r\n\r\nhi\r\n";
    assert_eq!(from_domain(message), Domain::parse("example.test").ok());
    assert_eq!(from_domain(b"To: bob@example.net\r\n\r\nhi\r\n"), None);
}

#[test]
fn reports_may_be_signed_by_the_host_or_a_parent_of_two_labels_or_more() {
    let check = |host: &str, expected: &[&str]| {
        let host = Domain::parse(host).unwrap();
        assert_eq!(
            report_domains(&host).collect::<Vec<_>>(),
            expected,
            "{host}"
        );
    };
    check("mx1.example.com", &["mx1.example.com", "example.com"]);
    check(
        "a.mx.example.co.uk",
        &[
            "a.mx.example.co.uk",
            "mx.example.co.uk",
            "example.co.uk",
            "co.uk",
        ],
    );
    check("example.com", &["example.com"]);
    // A single label is never a signing domain, not even the host's own.
    check("localhost", &[]);
    check("[192.0.2.1]", &[]);
}

#[test]
fn a_report_is_signed_by_the_closest_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(vec![
        ed25519_key(dir.path(), "example.com"),
        ed25519_key(dir.path(), "mail.example.com"),
        ed25519_key(dir.path(), "org"),
    ]);
    let d = |host: &str| {
        keys.sign_report(&report_from(host))
            .map(|signature| d_tag(&signature.unwrap()).to_owned())
    };
    // The usual setup: the host below the domain with the key.
    assert_eq!(d("mx1.example.com").as_deref(), Some("example.com"));
    // The closest parent wins, and the host's own key over any parent's.
    assert_eq!(
        d("mx1.mail.example.com").as_deref(),
        Some("mail.example.com")
    );
    assert_eq!(d("mail.example.com").as_deref(), Some("mail.example.com"));
    assert_eq!(d("example.com").as_deref(), Some("example.com"));
    // Only parents: not a domain that merely ends the same way, nor a sibling.
    assert_eq!(d("mx1.notexample.com"), None);
    assert_eq!(d("mx1.example.net"), None);
    // Never a key for a single label.
    assert_eq!(d("mx1.example.org"), None);
    // Users' mail is still signed only by its From domain's own key.
    assert!(keys.sign(&report_from("mx1.example.com")).is_none());
}

/// Messages whose signed header fields differ in which there are and in their order. mail-auth
/// lists the fields present, last first, then the rest of `SIGNED_HEADERS` (so that none can
/// be added later), in `h=`: its names' order moves its folds, and everything after them.
fn variants() -> impl Iterator<Item = Vec<u8>> {
    const OPTIONAL: [&str; 8] = [
        "Cc: carol@example.net",
        "Reply-To: alice@example.com",
        "Date: Mon, 2 Mar 2026 10:00:00 +0000",
        "Message-ID: <1@example.com>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain",
        "In-Reply-To: <0@example.net>",
        "List-Id: <list.example.com>",
    ];
    (0..256usize).map(|bits| {
        let mut fields = vec![
            "From: alice@example.com".to_owned(),
            "To: bob@example.net".to_owned(),
            format!("Subject: {}", "x".repeat(bits)),
        ];
        for (i, field) in OPTIONAL.iter().enumerate() {
            if bits & (1 << i) != 0 {
                fields.push((*field).to_owned());
            }
        }
        let turn = bits % fields.len();
        fields.rotate_left(turn);
        (fields.join("\r\n") + "\r\n\r\nhello\r\n").into_bytes()
    })
}

#[test]
fn the_field_ends_with_the_b_value_and_its_semicolon() {
    let dir = tempfile::tempdir().unwrap();
    let key = ed25519_key(dir.path(), "example.com");
    let Signer::Ed25519(signer) = &key.signer else {
        unreachable!("an Ed25519 key")
    };
    // The length of b= in base64 decides where it ends: Ed25519's signature, then RSA's of
    // 1024, 2048, 3072 and 4096 bits. Only the layout is under test here, so the signature
    // is mail-auth's for the message with b= replaced by as many made-up bytes.
    let lengths = [64, 128, 256, 384, 512];
    let mut folded_before_the_end = [0; 5];
    for message in variants() {
        let signed = signer.sign(&message).unwrap();
        for (n, length) in lengths.iter().enumerate() {
            let signature = mail_auth::dkim::Signature {
                b: vec![0xa5; *length],
                ..signed.clone()
            };
            let raw = signature.to_header();
            let ours = close_b_tag(raw.clone());
            if raw.ends_with("\r\n\t;\r\n") {
                folded_before_the_end[n] += 1;
                assert_eq!(ours, raw.replace("\r\n\t;\r\n", ";\r\n"));
            } else {
                assert_eq!(ours, raw);
            }
            let value = ours.strip_suffix(";\r\n").unwrap();
            assert!(!value.ends_with(char::is_whitespace), "{ours}");
            // Still within RFC 5322's 78 characters a line.
            assert!(ours.split("\r\n").all(|line| line.len() <= 78), "{ours}");
        }
        // And what the signer itself gives.
        let header = key.sign(&message).unwrap();
        assert!(header.ends_with("=;\r\n"), "{header}");
    }
    // The variants meet the case this is about: with 2048-bit RSA keys, whose 344 characters
    // of b= end a line when they start at column 32 (the h= list ending at column 40). The
    // tags before b= never start the others where they would.
    assert!(folded_before_the_end[2] > 0, "{folded_before_the_end:?}");
}

#[test]
fn a_field_of_another_layout_is_left_alone() {
    // No `b=`, or something other than base64 before the end: not ours to change.
    for header in [
        "DKIM-Signature: v=1; a=ed25519-sha256; bh=AAAA;\r\n\t;\r\n",
        "DKIM-Signature: v=1; b=AAAA\r\n\t; x=1;\r\n",
    ] {
        assert_eq!(close_b_tag(header.to_owned()), header);
    }
    assert_eq!(
        close_b_tag("DKIM-Signature: v=1; bh=AA==; b=AB\r\n\tCD==\r\n\t;\r\n".to_owned()),
        "DKIM-Signature: v=1; bh=AA==; b=AB\r\n\tCD==;\r\n"
    );
}
