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
                orcpt: Some("rfc822;bob@local.test".into()),
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

#[test]
fn round_trip() {
    let e = sample();
    assert_eq!(decode_envelope(&encode_envelope(&e)), Ok(e));
    let mut plain = sample();
    plain.sender = ReversePath::Null;
    plain.client.tls = None;
    plain.client.auth = None;
    plain.client.ptr = None;
    plain.trust = TrustClass::Unverified;
    plain.recipients[0].notify = Notify::Default;
    assert_eq!(decode_envelope(&encode_envelope(&plain)), Ok(plain));
}

/// Records written by version 1 must stay readable by every later version of backstop.
/// `BACKSTOP_WRITE_FIXTURES=1` writes the fixture anew; only do that for a new version's file.
#[test]
fn reads_the_committed_v1_fixture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/envelope-v1.bin"
    );
    if std::env::var_os("BACKSTOP_WRITE_FIXTURES").is_some() {
        std::fs::write(path, encode_envelope(&sample())).unwrap();
    }
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(decode_envelope(&bytes), Ok(sample()));
}

#[test]
fn damaged_records_are_errors_not_panics() {
    let bytes = encode_envelope(&sample());
    for len in 0..bytes.len() {
        assert!(decode_envelope(&bytes[..len]).is_err(), "length {len}");
    }
    let mut future = bytes.clone();
    future[0] = 99;
    assert_eq!(
        decode_envelope(&future),
        Err(RecordError::UnknownVersion(99))
    );
}
