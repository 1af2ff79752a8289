use super::*;

const NOW: u64 = 1_790_000_000;
const LATER: u64 = NOW + 7 * 86_400;

fn keys(ids: &[u8], sign_with: u8) -> TokenKeys {
    let secrets = ids
        .iter()
        .map(|id| {
            (
                *id,
                format!("the secret of token key number {id}").into_bytes(),
            )
        })
        .collect();
    TokenKeys::new(secrets, sign_with).unwrap()
}

fn decode(token: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(token).unwrap()
}

fn encode(raw: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(raw)
}

#[test]
fn a_signed_token_verifies_to_its_claims() {
    let keys = keys(&[0, 3], 3);
    let actions = Actions::RELEASE | Actions::ALLOW_SENDER;
    let token = keys
        .sign(0x0123_4567_89ab_cdef, "Bob@Example.TEST", actions, LATER)
        .unwrap();
    assert!(token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(
        keys.verify(&token, NOW).unwrap(),
        Claims {
            key_id: 3,
            queue_id: 0x0123_4567_89ab_cdef,
            recipient: "Bob@Example.TEST".into(),
            actions,
            expires: LATER,
        }
    );
    let raw = decode(&token);
    assert_eq!(raw.len(), FIXED + "Bob@Example.TEST".len() + TAG_LEN);
    assert_eq!(raw[..2], [1, 3]);
}

#[test]
fn a_recipient_of_the_longest_size_fits_and_a_longer_one_does_not() {
    let keys = keys(&[1], 1);
    let longest = format!("{}@{}", "l".repeat(64), "d".repeat(255));
    assert_eq!(longest.len(), MAX_RECIPIENT);
    let token = keys.sign(1, &longest, Actions::DELETE, LATER).unwrap();
    assert!(token.len() <= MAX_TOKEN);
    assert_eq!(keys.verify(&token, NOW).unwrap().recipient, longest);
    let longer = format!("{longest}x");
    assert_eq!(
        keys.sign(1, &longer, Actions::DELETE, LATER),
        Err(TokenError::RecipientTooLong)
    );
    assert_eq!(
        keys.sign(1, &"x".repeat(70_000), Actions::DELETE, LATER),
        Err(TokenError::RecipientTooLong)
    );
}

#[test]
fn every_single_byte_tamper_fails() {
    let keys = keys(&[0, 1, 2], 1);
    let token = keys
        .sign(42, "alice@example.test", Actions::RELEASE, LATER)
        .unwrap();
    let raw = decode(&token);
    for at in 0..raw.len() {
        for flip in [0x01, 0x02, 0x10, 0x80, 0xff] {
            let mut tampered = raw.clone();
            tampered[at] ^= flip;
            let result = keys.verify(&encode(&tampered), NOW);
            assert!(result.is_err(), "octet {at} ^ {flip:#04x}: {result:?}");
        }
    }
    // Cut or extended by one octet.
    assert_eq!(
        keys.verify(&encode(&raw[..raw.len() - 1]), NOW),
        Err(TokenError::BadLength)
    );
    let mut longer = raw.clone();
    longer.push(0);
    assert_eq!(
        keys.verify(&encode(&longer), NOW),
        Err(TokenError::BadLength)
    );
    // A tampered tag is a signature mismatch, not anything vaguer.
    let mut bad_tag = raw.clone();
    *bad_tag.last_mut().unwrap() ^= 1;
    assert_eq!(
        keys.verify(&encode(&bad_tag), NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn a_token_works_while_its_key_is_configured() {
    let old = keys(&[1, 2], 1);
    let token = old
        .sign(7, "carol@example.test", Actions::RELEASE, LATER)
        .unwrap();
    // Rotated: key 2 signs, key 1 is kept for the tokens still out there.
    let rotated = keys(&[1, 2], 2);
    assert_eq!(rotated.verify(&token, NOW).unwrap().key_id, 1);
    let newer = rotated
        .sign(7, "carol@example.test", Actions::RELEASE, LATER)
        .unwrap();
    assert_eq!(rotated.verify(&newer, NOW).unwrap().key_id, 2);
    // Retired: key 1 removed.
    let retired = keys(&[2], 2);
    assert_eq!(retired.verify(&token, NOW), Err(TokenError::UnknownKey));
    assert!(retired.verify(&newer, NOW).is_ok());
    // Same id, another secret: the signature does not match.
    let replaced = TokenKeys::new(vec![(1, b"an entirely different secret".to_vec())], 1).unwrap();
    assert_eq!(replaced.verify(&token, NOW), Err(TokenError::BadSignature));
}

#[test]
fn an_expired_token_fails() {
    let keys = keys(&[0], 0);
    let token = keys
        .sign(1, "dave@example.test", Actions::RELEASE, LATER)
        .unwrap();
    assert!(keys.verify(&token, LATER - 1).is_ok());
    assert_eq!(keys.verify(&token, LATER), Err(TokenError::Expired));
    assert_eq!(keys.verify(&token, u64::MAX), Err(TokenError::Expired));
}

#[test]
fn a_token_does_not_carry_over_to_another_recipient() {
    let keys = keys(&[0], 0);
    let token = keys
        .sign(9, "alice@example.test", Actions::RELEASE, LATER)
        .unwrap();
    let raw = decode(&token);
    let tag = &raw[raw.len() - TAG_LEN..];
    for other in [
        "bob@example.test",
        "alice@example.tesu",
        "ALICE@example.test",
        "",
    ] {
        let mut forged = raw[..FIXED - 2].to_vec();
        forged.extend_from_slice(&u16::try_from(other.len()).unwrap().to_be_bytes());
        forged.extend_from_slice(other.as_bytes());
        forged.extend_from_slice(tag);
        assert_eq!(
            keys.verify(&encode(&forged), NOW),
            Err(TokenError::BadSignature),
            "{other}"
        );
    }
    // Nor to another message, or to more actions.
    let other_message = keys
        .sign(10, "alice@example.test", Actions::RELEASE, LATER)
        .unwrap();
    let mut forged = raw.clone();
    let other_tag = decode(&other_message);
    forged[2..10].copy_from_slice(&other_tag[2..10]);
    assert_eq!(
        keys.verify(&encode(&forged), NOW),
        Err(TokenError::BadSignature)
    );
    let mut forged = raw.clone();
    forged[18] = Actions::RELEASE.bits() | Actions::DELETE.bits();
    assert_eq!(
        keys.verify(&encode(&forged), NOW),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn garbage_fails_cleanly() {
    let keys = keys(&[0], 0);
    let huge = "A".repeat(10_000);
    let cases: [(&str, TokenError); 10] = [
        ("", TokenError::BadLength),
        ("\0", TokenError::BadEncoding),
        ("abc\r\ndef", TokenError::BadEncoding),
        ("AQA=", TokenError::BadEncoding),
        ("a+b/", TokenError::BadEncoding),
        ("é", TokenError::BadEncoding),
        ("A", TokenError::BadEncoding),
        ("AQA", TokenError::BadLength),
        (&huge, TokenError::TooLong),
        (
            "AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            TokenError::BadVersion,
        ),
    ];
    for (input, expected) in cases {
        let shown: String = input.chars().take(20).collect();
        assert_eq!(keys.verify(input, NOW), Err(expected), "{shown:?}");
    }
    // A well-formed token for a key we never had.
    let other = TokenKeys::new(vec![(5, b"some other secret value".to_vec())], 5).unwrap();
    let token = other
        .sign(1, "x@example.test", Actions::RELEASE, LATER)
        .unwrap();
    assert_eq!(keys.verify(&token, NOW), Err(TokenError::UnknownKey));
    // The longest allowed length, all garbage.
    assert!(keys.verify(&"_".repeat(MAX_TOKEN), NOW).is_err());
    assert_eq!(
        keys.verify(&"_".repeat(MAX_TOKEN + 1), NOW),
        Err(TokenError::TooLong)
    );
}

#[test]
fn a_recipient_length_beyond_the_maximum_is_refused_before_the_mac() {
    let keys = keys(&[0], 0);
    let mut raw = vec![1, 0];
    raw.extend_from_slice(&[0; 17]);
    raw.extend_from_slice(&(u16::MAX).to_be_bytes());
    raw.extend_from_slice(&[b'a'; 400]);
    assert_eq!(keys.verify(&encode(&raw), NOW), Err(TokenError::BadLength));
}

#[test]
fn keys_are_checked() {
    let secret = || b"sixteen octets!!".to_vec();
    assert!(TokenKeys::new(vec![(0, secret()), (9, secret())], 9).is_ok());
    assert_eq!(
        TokenKeys::new(vec![(10, secret())], 10).unwrap_err(),
        TokenError::KeyIdOutOfRange(10)
    );
    assert_eq!(
        TokenKeys::new(vec![(1, secret()), (1, secret())], 1).unwrap_err(),
        TokenError::DuplicateKeyId(1)
    );
    assert_eq!(
        TokenKeys::new(vec![(1, b"fifteen octets!".to_vec())], 1).unwrap_err(),
        TokenError::SecretTooShort(1)
    );
    assert_eq!(
        TokenKeys::new(vec![(1, secret())], 2).unwrap_err(),
        TokenError::NoSigningKey(2)
    );
    assert_eq!(
        TokenKeys::new(vec![], 0).unwrap_err(),
        TokenError::NoSigningKey(0)
    );
    // The secrets are never shown.
    let shown = format!("{:?}", TokenKeys::new(vec![(4, secret())], 4).unwrap());
    assert_eq!(shown, "TokenKeys { ids: [4], sign_with: 4 }");
}

#[test]
fn actions_are_a_small_set() {
    let both = Actions::RELEASE | Actions::DELETE;
    assert!(both.contains(Actions::RELEASE) && both.contains(Actions::DELETE));
    assert!(!both.contains(Actions::ALLOW_SENDER));
    assert!(both.contains(Actions::NONE));
    assert_eq!(both.names(), ["release", "delete"]);
    assert_eq!(Actions::ALLOW_SENDER.names(), ["allow-sender"]);
    assert!(Actions::NONE.names().is_empty());
    assert_eq!(Actions::from_bits(7).map(|a| a.names().len()), Some(3));
    assert_eq!(Actions::from_bits(8), None);
}

#[test]
fn refusals_read_well_on_a_page() {
    for e in [
        TokenError::TooLong,
        TokenError::BadEncoding,
        TokenError::BadVersion,
        TokenError::UnknownKey,
        TokenError::BadLength,
        TokenError::BadSignature,
        TokenError::BadRecipient,
        TokenError::BadActions,
        TokenError::Expired,
    ] {
        let text = e.to_string();
        assert!(text.starts_with("this link "), "{text}");
        assert!(text.is_ascii() && !text.contains(['<', '&', '"']), "{text}");
    }
}
