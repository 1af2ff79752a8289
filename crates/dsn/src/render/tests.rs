//! Golden files: each report is compared byte for byte with `tests/golden/*.eml`. Write them
//! anew with `BACKSTOP_WRITE_GOLDEN=1` after a deliberate change, and read the diff.

use std::path::PathBuf;

use backstop_types::{BodyType, ClientInfo, DsnParams, Notify, Recipient, ReversePath, TrustClass};

use super::*;

const ORIGINAL: &[u8] = b"Received: from client.example.org by mx.example.test\r\n\
From: Alice <alice@example.test>\r\n\
To: bob@example.net, carol@example.net\r\n\
Subject: the quarterly numbers\r\n\
Message-ID: <q3@example.test>\r\n\
\r\n\
Here they are.\r\n";

fn envelope(ret: Option<Ret>, envid: Option<&str>) -> Envelope {
    let recipient = |address: &str, orcpt: Option<&str>| Recipient {
        address: Address::parse(address).unwrap(),
        notify: Notify::Default,
        orcpt: orcpt.map(|o| backstop_types::Orcpt::from_stored(o).unwrap()),
    };
    Envelope {
        sender: ReversePath::Address(Address::parse("alice@example.test").unwrap()),
        recipients: vec![
            recipient("bob@example.net", Some("rfc822;Bob@example.net")),
            recipient("carol@example.net", None),
        ],
        dsn: DsnParams {
            ret,
            envid: envid.map(str::to_owned),
        },
        body_type: BodyType::SevenBit,
        smtputf8: false,
        client: ClientInfo {
            ip: "192.0.2.7".parse().unwrap(),
            helo: "laptop".into(),
            ptr: None,
            tls: None,
            auth: None,
            listener: "submission".into(),
        },
        arrival: UnixTime(1_795_300_000),
        trust: TrustClass::Authenticated {
            user: "alice".into(),
        },
    }
}

fn check(name: &str, rendered: &[u8]) {
    let path = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("tests/golden")
        .join(format!("{name}.eml"));
    if std::env::var_os("BACKSTOP_WRITE_GOLDEN").is_some() {
        std::fs::write(&path, rendered).unwrap();
    }
    let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        golden == rendered,
        "{name} differs from {}:\n{}",
        path.display(),
        String::from_utf8_lossy(rendered)
    );
    // Never a bare CR or LF.
    for (i, &b) in rendered.iter().enumerate() {
        if b == b'\n' {
            assert_eq!(
                rendered.get(i.wrapping_sub(1)),
                Some(&b'\r'),
                "bare LF at {i}"
            );
        }
        if b == b'\r' {
            assert_eq!(rendered.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
}

fn report<'a>(envelope: &'a Envelope, action: Action, to: &'a Address) -> Report<'a> {
    Report {
        reporting_mta: "mx.example.test",
        to,
        envelope,
        action,
        recipients: Vec::new(),
        original: ORIGINAL,
        date: UnixTime(1_795_310_000),
        message_id: "000660E2757FF57D.dsn@mx.example.test".into(),
        boundary: "000660E2757FF57D/mx.example.test".into(),
    }
}

#[test]
fn a_failure_with_the_headers() {
    let envelope = envelope(None, None);
    let to = Address::parse("alice@example.test").unwrap();
    let mut r = report(&envelope, Action::Failed, &to);
    r.recipients = vec![
        RecipientReport {
            recipient: &envelope.recipients[0],
            status: EnhancedStatus(5, 1, 1),
            remote_host: Some("mx1.example.net[192.0.2.25:25]"),
            diagnostic: Some((
                550,
                "5.1.1 <bob@example.net>: Recipient address rejected:\nUser unknown",
            )),
            last_attempt: UnixTime(1_795_309_000),
            will_retry_until: None,
        },
        RecipientReport {
            recipient: &envelope.recipients[1],
            status: EnhancedStatus(4, 4, 7),
            remote_host: None,
            diagnostic: Some((451, "Message expired: not delivered in 5 days")),
            last_attempt: UnixTime(1_795_309_500),
            will_retry_until: None,
        },
    ];
    check("failed-headers", &r.render());
}

#[test]
fn a_failure_with_the_full_message_and_an_envelope_id() {
    let envelope = envelope(Some(Ret::Full), Some("q3-batch-7"));
    let to = Address::parse("alice@example.test").unwrap();
    let mut r = report(&envelope, Action::Failed, &to);
    r.recipients = vec![RecipientReport {
        recipient: &envelope.recipients[1],
        status: EnhancedStatus(5, 2, 2),
        remote_host: Some("mx1.example.net[192.0.2.25:25]"),
        diagnostic: Some((552, "5.2.2 mailbox full")),
        last_attempt: UnixTime(1_795_309_000),
        will_retry_until: None,
    }];
    check("failed-full", &r.render());
}

#[test]
fn a_delay_notice() {
    let envelope = envelope(None, None);
    let to = Address::parse("alice@example.test").unwrap();
    let mut r = report(&envelope, Action::Delayed, &to);
    r.recipients = vec![RecipientReport {
        recipient: &envelope.recipients[0],
        status: EnhancedStatus(4, 4, 1),
        remote_host: Some("mx1.example.net[192.0.2.25:25]"),
        diagnostic: Some((451, "4.4.1 connection refused")),
        last_attempt: UnixTime(1_795_309_000),
        will_retry_until: Some(UnixTime(1_795_732_000)),
    }];
    check("delayed", &r.render());
}

#[test]
fn a_success_report() {
    let envelope = envelope(None, None);
    let to = Address::parse("alice@example.test").unwrap();
    let mut r = report(&envelope, Action::Relayed, &to);
    r.recipients = vec![RecipientReport {
        recipient: &envelope.recipients[0],
        status: EnhancedStatus(2, 0, 0),
        remote_host: Some("mx1.example.net[192.0.2.25:25]"),
        diagnostic: Some((250, "2.0.0 Ok: queued as 4Xyz")),
        last_attempt: UnixTime(1_795_309_000),
        will_retry_until: None,
    }];
    check("relayed", &r.render());
}
