use super::*;

fn keys(lifetime: u16) -> Keys {
    Keys::new(
        &[
            (0, b"an old secret, retired".to_vec()),
            (3, b"the current secret of key 3".to_vec()),
        ],
        3,
        lifetime,
    )
    .unwrap()
}

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

#[test]
fn a_signed_address_verifies_to_the_original() {
    let keys = keys(7);
    let today = 20_779; // 2026-11-22
    let tagged = keys.sign(&addr("Alice@Example.TEST"), today);
    let local = tagged.local_part();
    assert!(local.starts_with("prvs=3786"), "{tagged}"); // key 3, day 20786 mod 1000
    assert_eq!(local.len(), "prvs=3786xxxxxx=Alice".len(), "{tagged}");
    assert_eq!(tagged.domain().as_str(), "example.test");
    assert_eq!(
        keys.verify(&tagged, today).unwrap(),
        addr("Alice@example.test")
    );
    // Hex digits compare without regard to case; the address is hashed in lower case.
    let upper = addr(&tagged.to_string().to_uppercase());
    assert_eq!(
        keys.verify(&upper, today).unwrap().to_string(),
        "ALICE@example.test"
    );
}

#[test]
fn the_day_wraps_at_1000() {
    let keys = keys(7);
    let today = 20_998; // day 998 of the circle
    let tagged = keys.sign(&addr("bob@example.test"), today);
    assert!(tagged.local_part().starts_with("prvs=3005"), "{tagged}");
    for day in [20_998, 20_999, 21_000, 21_004, 21_005] {
        assert!(keys.verify(&tagged, day).is_ok(), "day {day}");
    }
    assert_eq!(keys.verify(&tagged, 21_006), Err(TagError::Expired));
    assert_eq!(keys.verify(&tagged, 20_990), Err(TagError::Expired));
}

#[test]
fn an_expired_tag_fails() {
    let keys = keys(7);
    let tagged = keys.sign(&addr("bob@example.test"), 100);
    assert!(keys.verify(&tagged, 107).is_ok());
    assert_eq!(keys.verify(&tagged, 108), Err(TagError::Expired));
    assert_eq!(keys.verify(&tagged, 500), Err(TagError::Expired));
}

#[test]
fn retired_keys_verify_and_unknown_keys_do_not() {
    let old = Keys::new(&[(0, b"an old secret, retired".to_vec())], 0, 7).unwrap();
    let tagged = old.sign(&addr("bob@example.test"), 100);
    assert!(keys(7).verify(&tagged, 101).is_ok());
    let other = Keys::new(&[(5, b"someone else's secret".to_vec())], 5, 7).unwrap();
    assert_eq!(
        keys(7).verify(&other.sign(&addr("bob@example.test"), 100), 101),
        Err(TagError::UnknownKey(5))
    );
}

#[test]
fn forged_and_malformed_tags_fail() {
    let keys = keys(7);
    let tagged = keys.sign(&addr("bob@example.test"), 100).to_string();
    // Another address under the same tag.
    let moved = tagged.replace("=bob@", "=eve@");
    assert_eq!(keys.verify(&addr(&moved), 100), Err(TagError::BadSignature));
    // A later expiry day under the same signature.
    let later = tagged.replacen("prvs=3107", "prvs=3108", 1);
    assert_eq!(keys.verify(&addr(&later), 100), Err(TagError::BadSignature));
    for bad in ["bob@example.test", "prv=3107abcdef=bob@example.test"] {
        assert_eq!(
            keys.verify(&addr(bad), 100),
            Err(TagError::Missing),
            "{bad}"
        );
    }
    for bad in [
        "prvs=3107abcde=bob@example.test",
        "prvs=3107abcdeg=bob@example.test",
        "prvs=x107abcdef=bob@example.test",
        "prvs=3107abcdef@example.test",
    ] {
        assert_eq!(
            keys.verify(&addr(bad), 100),
            Err(TagError::Malformed),
            "{bad}"
        );
    }
}

#[test]
fn bad_key_sets_are_refused() {
    let secret = b"a secret long enough".to_vec();
    assert_eq!(
        Keys::new(&[(10, secret.clone())], 10, 7).unwrap_err(),
        KeyError::BadNumber(10)
    );
    assert_eq!(
        Keys::new(&[(1, secret.clone()), (1, secret.clone())], 1, 7).unwrap_err(),
        KeyError::Duplicate(1)
    );
    assert_eq!(
        Keys::new(&[(1, b"short".to_vec())], 1, 7).unwrap_err(),
        KeyError::TooShort(1)
    );
    assert_eq!(
        Keys::new(&[(1, secret.clone())], 2, 7).unwrap_err(),
        KeyError::NoSigningKey(2)
    );
    assert_eq!(
        Keys::new(&[(1, secret)], 1, 0).unwrap_err(),
        KeyError::BadLifetime
    );
}

#[test]
fn an_address_too_long_to_tag_is_sent_untagged() {
    let long = format!("{}@example.test", "a".repeat(60));
    assert_eq!(keys(7).sign(&addr(&long), 100), addr(&long));
}
