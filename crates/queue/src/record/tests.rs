use super::*;

/// An envelope with every optional part set, as the fixture holds it.
pub(crate) fn sample() -> Envelope {
    Envelope {
        sender: ReversePath::Address(Address::parse("alice@example.org").unwrap()),
        recipients: vec![
            Recipient {
                address: Address::parse("bob@local.test").unwrap(),
                notify: Notify::On {
                    success: true,
                    failure: true,
                    delay: false,
                },
                orcpt: Some(backstop_types::Orcpt::new("rfc822", "bob@local.test").unwrap()),
            },
            Recipient {
                address: Address::parse("carol@local.test").unwrap(),
                notify: Notify::Never,
                orcpt: None,
            },
        ],
        dsn: DsnParams {
            ret: Some(Ret::Headers),
            envid: Some("env-1".into()),
        },
        body_type: BodyType::EightBitMime,
        smtputf8: true,
        client: ClientInfo {
            ip: "2001:db8::1".parse().unwrap(),
            helo: "client.example.org".into(),
            ptr: Some(Domain::parse("client.example.org").unwrap()),
            tls: Some(TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_256_GCM_SHA384".into(),
            }),
            auth: Some(AuthInfo {
                user: "alice".into(),
                mechanism: "PLAIN".into(),
            }),
            listener: "submission".into(),
        },
        arrival: UnixTime(1_795_367_999),
        trust: TrustClass::Authenticated {
            user: "alice".into(),
        },
    }
}

/// A v2 entry with every kind of recipient state (nothing reported, no delay notices: what
/// version 2 reads as).
fn sample_entry() -> Entry {
    let attempt = |code, status, text: &str| Attempt {
        remote_host: Some("mx1.example.org[192.0.2.25]".into()),
        reply: RemoteReply {
            code,
            status,
            text: text.into(),
        },
    };
    let mut envelope = sample();
    envelope.recipients.push(Recipient {
        address: Address::parse("dave@local.test").unwrap(),
        notify: Notify::Default,
        orcpt: None,
    });
    Entry {
        envelope,
        states: vec![
            RecipientState::Pending {
                attempts: 2,
                next_attempt: UnixTime(1_795_368_599),
                last: Some(attempt(451, Some(EnhancedStatus(4, 3, 0)), "try later")),
            },
            RecipientState::Delivered {
                at: UnixTime(1_795_368_000),
                last: attempt(250, Some(EnhancedStatus(2, 0, 0)), "ok"),
            },
            RecipientState::Failed {
                at: UnixTime(1_795_368_001),
                last: attempt(550, None, "no such user"),
            },
        ],
        held: true,
        reported: vec![false; 3],
        delay_notices: 0,
        size: 0,
    }
}

#[test]
fn round_trip() {
    let e = sample_entry();
    assert_eq!(decode_entry(&encode_entry(&e)), Ok(e));
    let mut plain = Entry::new(sample(), 0);
    plain.envelope.sender = ReversePath::Null;
    plain.envelope.client.tls = None;
    plain.envelope.client.auth = None;
    plain.envelope.client.ptr = None;
    plain.envelope.trust = TrustClass::Unverified;
    plain.envelope.recipients[0].notify = Notify::Default;
    assert_eq!(decode_entry(&encode_entry(&plain)), Ok(plain));
    assert_eq!(
        decode_quarantine(&encode_quarantine(&sample_quarantine_v2())),
        Ok(sample_quarantine_v2())
    );
}

/// Records written by each version must stay readable by every later version of backstop.
/// `BACKSTOP_WRITE_FIXTURES=1` writes the newest version's fixture anew; only do that when a
/// new version is introduced, and keep the old files.
fn fixture(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn reads_the_committed_v1_fixture() {
    // Written by the first release (the envelope alone): every recipient reads as pending.
    let bytes = std::fs::read(fixture("envelope-v1.bin")).unwrap();
    assert_eq!(decode_entry(&bytes), Ok(Entry::new(sample(), 0)));
}

/// A v3 entry: a failure reported by a DSN, and a delay notice sent.
fn sample_entry_v3() -> Entry {
    let mut entry = sample_entry();
    entry.reported[2] = true;
    entry.delay_notices = 1;
    entry
}

/// A v4 entry: v3's, with its message's size.
fn sample_entry_v4() -> Entry {
    let mut entry = sample_entry_v3();
    entry.size = 48_213;
    entry
}

#[test]
fn reads_the_committed_v4_fixture() {
    if std::env::var_os("BACKSTOP_WRITE_FIXTURES").is_some() {
        std::fs::write(fixture("entry-v4.bin"), encode_entry(&sample_entry_v4())).unwrap();
    }
    let bytes = std::fs::read(fixture("entry-v4.bin")).unwrap();
    assert_eq!(decode_entry(&bytes), Ok(sample_entry_v4()));
}

#[test]
fn reads_the_committed_v3_fixture() {
    let bytes = std::fs::read(fixture("entry-v3.bin")).unwrap();
    assert_eq!(decode_entry(&bytes), Ok(sample_entry_v3()));
}

#[test]
fn reads_the_committed_v2_fixture() {
    let bytes = std::fs::read(fixture("entry-v2.bin")).unwrap();
    assert_eq!(decode_entry(&bytes), Ok(sample_entry()));
    let bytes = std::fs::read(fixture("quarantine-v1.bin")).unwrap();
    assert_eq!(decode_quarantine(&bytes), Ok(sample_quarantine()));
}

/// A v1 quarantine record: a free-text reason, read as a content verdict held for the
/// administrator, size not known.
fn sample_quarantine() -> QuarantineRecord {
    let owners = vec![Owner::Admin; sample().recipients.len()];
    QuarantineRecord::new(
        sample(),
        Reason::content("", "", "content filter: quarantine"),
        UnixTime(1_795_368_000),
        0,
        &owners,
    )
}

/// A v2 quarantine record: a structured reason, the size, and per recipient its owner, state
/// and whether a digest listed it.
fn sample_quarantine_v2() -> QuarantineRecord {
    let mut owners = vec![Owner::Recipient; sample().recipients.len()];
    owners[0] = Owner::Admin;
    let mut q = QuarantineRecord::new(
        sample(),
        Reason::content("clamd", "clamd 127.0.0.1:3310", "Eicar-Test-Signature"),
        UnixTime(1_795_368_000),
        48_213,
        &owners,
    );
    q.held[1].state = HeldState::Released(UnixTime(1_795_369_000));
    q.held[1].notified = true;
    q
}

#[test]
fn reads_the_committed_quarantine_v2_fixture() {
    if std::env::var_os("BACKSTOP_WRITE_FIXTURES").is_some() {
        std::fs::write(
            fixture("quarantine-v2.bin"),
            encode_quarantine(&sample_quarantine_v2()),
        )
        .unwrap();
    }
    let bytes = std::fs::read(fixture("quarantine-v2.bin")).unwrap();
    assert_eq!(decode_quarantine(&bytes), Ok(sample_quarantine_v2()));
}

#[test]
fn v1_quarantine_reasons_read_as_the_kind_their_text_names() {
    let mut old = Vec::new();
    for text in [
        "delivery failed: a@b: 550 no",
        "DMARC fail for x (p=quarantine)",
        "rule x: y",
    ] {
        let mut w = Writer(Vec::new());
        w.u8(1);
        write_envelope(&mut w, &sample());
        w.str(text);
        w.u64(1);
        old.push(decode_quarantine(&w.0).unwrap().reason.kind);
    }
    assert_eq!(
        old,
        [
            ReasonKind::Undeliverable,
            ReasonKind::Dmarc,
            ReasonKind::Content
        ]
    );
}

#[test]
fn damaged_records_are_errors_not_panics() {
    let bytes = encode_entry(&sample_entry());
    for len in 0..bytes.len() {
        assert!(decode_entry(&bytes[..len]).is_err(), "length {len}");
    }
    let mut future = bytes.clone();
    future[0] = 99;
    assert_eq!(decode_entry(&future), Err(RecordError::UnknownVersion(99)));
}
