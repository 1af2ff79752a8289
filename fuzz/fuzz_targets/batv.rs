//! BATV tags (`crates/batv`): parsing and verifying whatever tag a bounce's recipient carries,
//! and signing any address a sender may have.
//!
//! Input: octets 0-1 choose the day, octet 2 the tags' lifetime, the rest is an address (as
//! a bounce's RCPT or our sender may hold it).
//!
//! Checked, besides "no panic":
//! - a tag that verifies names the address it was put on (same domain, the rest of the local
//!   part) and verifies the same with its letters in upper case;
//! - every address we sign verifies to itself from its day to its expiry day and no longer
//!   (across the day number's wrap at 1000); one that cannot take a tag is left as it is only
//!   when the tag would make its local part too long.

#![no_main]

use backstop_batv::{Keys, TagError};
use backstop_types::Address;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [d0, d1, lifetime, text @ ..] = data else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(address) = Address::parse(text) else {
        return;
    };
    let today = 20_000 + u64::from(u16::from_le_bytes([*d0, *d1]));
    let lifetime = 1 + u16::from(*lifetime) % 365;
    let keys = Keys::new(
        &[
            (0, b"an old secret, retired".to_vec()),
            (3, b"the current secret of key 3".to_vec()),
        ],
        3,
        lifetime,
    )
    .expect("valid keys");

    if let Ok(original) = keys.verify(&address, today) {
        let local = address.local_part();
        assert_eq!(original.domain(), address.domain());
        assert!(local[..5].eq_ignore_ascii_case("prvs="));
        assert_eq!(&local[16..], original.local_part());
        let upper = format!("{}{}", local[..15].to_ascii_uppercase(), &local[15..]);
        let upper = Address::new(&upper, address.domain().clone()).expect("still an address");
        assert_eq!(keys.verify(&upper, today), Ok(original));
    }

    let tagged = keys.sign(&address, today);
    if tagged == address {
        assert!(
            address.local_part().len() + 16 > 64,
            "{address} left untagged"
        );
        return;
    }
    assert_eq!(tagged.domain(), address.domain());
    let expiry = today + u64::from(lifetime);
    for day in [today, today + 1, expiry - 1, expiry] {
        assert_eq!(
            keys.verify(&tagged, day).as_ref(),
            Ok(&address),
            "day {day}"
        );
    }
    assert_eq!(keys.verify(&tagged, expiry + 1), Err(TagError::Expired));
    assert_eq!(keys.verify(&tagged, today - 1), Err(TagError::Expired));
    // As the tag travels: printed into a RCPT line and parsed at the other end.
    let printed = Address::parse(&tagged.to_string()).expect("a tagged address parses");
    assert_eq!(keys.verify(&printed, today).as_ref(), Ok(&address));
});
