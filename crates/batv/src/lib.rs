//! BATV, Bounce Address Tag Validation (draft-levine-smtp-batv-01, the `prvs` scheme).
//!
//! Mail we send carries a tag in its envelope sender, `prvs=KDDDSSSSSS=local@domain`:
//! - `K`: the key number, 0–9;
//! - `DDD`: the day the tag expires, in days since 1970-01-01, modulo 1000;
//! - `SSSSSS`: the first three bytes, in hex, of HMAC-SHA1(secret K, "KDDD" + the address in
//!   lower case).
//!
//! A bounce (null sender) to a tagged address can then be checked: only addresses we really
//! used as a return path, recently, carry a valid tag. Retired keys stay in [`Keys`] until the
//! tags made with them have expired; only [`Keys::sign_with`] signs.
//!
//! Pure: the day is passed in, and nothing here reads a clock or a file.

use backstop_types::{Address, UnixTime};
use ring::hmac;

/// Days since 1970-01-01 of a moment.
pub fn day_of(t: UnixTime) -> u64 {
    t.0 / 86_400
}

/// The set of keys, by number, and which one signs.
#[derive(Clone)]
pub struct Keys {
    keys: [Option<hmac::Key>; 10],
    sign_with: u8,
    /// How many days a new tag is valid, and the longest validity a tag may claim.
    lifetime_days: u16,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        let numbers: Vec<usize> = (0..10).filter(|n| self.keys[*n].is_some()).collect();
        f.debug_struct("Keys")
            .field("numbers", &numbers)
            .field("sign_with", &self.sign_with)
            .field("lifetime_days", &self.lifetime_days)
            .finish()
    }
}

/// Why [`Keys::new`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key number {0} is not between 0 and 9")]
    BadNumber(u8),
    #[error("key {0} is given twice")]
    Duplicate(u8),
    #[error("key {0} is shorter than 16 bytes")]
    TooShort(u8),
    #[error("the signing key {0} is not among the keys")]
    NoSigningKey(u8),
    #[error("the lifetime must be between 1 and 365 days")]
    BadLifetime,
}

/// Why a tagged address did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TagError {
    #[error("the address carries no BATV tag")]
    Missing,
    #[error("the BATV tag is malformed")]
    Malformed,
    #[error("the BATV tag names key {0}, which we do not have")]
    UnknownKey(u8),
    #[error("the BATV tag's signature does not match")]
    BadSignature,
    #[error("the BATV tag has expired")]
    Expired,
}

impl Keys {
    /// `secrets` are (number, secret) pairs; `sign_with` must be one of them.
    pub fn new(
        secrets: &[(u8, Vec<u8>)],
        sign_with: u8,
        lifetime_days: u16,
    ) -> Result<Keys, KeyError> {
        if !(1..=365).contains(&lifetime_days) {
            return Err(KeyError::BadLifetime);
        }
        let mut keys: [Option<hmac::Key>; 10] = Default::default();
        for (number, secret) in secrets {
            let slot = keys
                .get_mut(usize::from(*number))
                .ok_or(KeyError::BadNumber(*number))?;
            if slot.is_some() {
                return Err(KeyError::Duplicate(*number));
            }
            if secret.len() < 16 {
                return Err(KeyError::TooShort(*number));
            }
            *slot = Some(hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret));
        }
        if keys.get(usize::from(sign_with)).is_none_or(Option::is_none) {
            return Err(KeyError::NoSigningKey(sign_with));
        }
        Ok(Keys {
            keys,
            sign_with,
            lifetime_days,
        })
    }

    /// `address` with a tag that expires `lifetime_days` after `today`.
    pub fn sign(&self, address: &Address, today: u64) -> Address {
        let ddd = ((today + u64::from(self.lifetime_days)) % 1000) as u16;
        let key = self.keys[usize::from(self.sign_with)]
            .as_ref()
            .expect("Keys::new checked that the signing key exists");
        let hash = signature(key, self.sign_with, ddd, &address.to_string());
        let local = format!(
            "prvs={}{ddd:03}{hash}={}",
            self.sign_with,
            address.local_part()
        );
        // The tag adds 17 octets; an address already near the 64-octet limit is sent untagged
        // rather than made invalid.
        Address::new(&local, address.domain().clone()).unwrap_or_else(|_| address.clone())
    }

    /// Checks the tag of `address` on `today` and returns the address without it.
    pub fn verify(&self, address: &Address, today: u64) -> Result<Address, TagError> {
        let tag = Tag::parse(address)?;
        let key = self
            .keys
            .get(usize::from(tag.key))
            .and_then(Option::as_ref)
            .ok_or(TagError::UnknownKey(tag.key))?;
        let expected = signature(key, tag.key, tag.day, &tag.original.to_string());
        // In constant time, so the hash cannot be guessed digit by digit from the time a
        // refusal takes. Both are six hex digits (checked by the parser).
        let given = tag.hash.to_ascii_lowercase();
        if !backstop_types::secret::same_secret(expected.as_bytes(), given.as_bytes()) {
            return Err(TagError::BadSignature);
        }
        // Days from today until the tag's expiry day, on the 1000-day circle. A valid tag
        // expires between today and `lifetime_days` from now; anything else lies in the past.
        let remaining = (u64::from(tag.day) + 1000 - today % 1000) % 1000;
        if remaining > u64::from(self.lifetime_days) {
            return Err(TagError::Expired);
        }
        Ok(tag.original)
    }
}

/// The parts of a tagged address.
struct Tag<'a> {
    key: u8,
    day: u16,
    hash: &'a str,
    original: Address,
}

impl<'a> Tag<'a> {
    fn parse(address: &'a Address) -> Result<Tag<'a>, TagError> {
        let local = address.local_part();
        let rest = match local.get(..5) {
            Some(p) if p.eq_ignore_ascii_case("prvs=") => &local[5..],
            _ => return Err(TagError::Missing),
        };
        let (tag, core) = rest.split_once('=').ok_or(TagError::Malformed)?;
        let bytes = tag.as_bytes();
        if bytes.len() != 10
            || !bytes[..4].iter().all(u8::is_ascii_digit)
            || !bytes[4..].iter().all(u8::is_ascii_hexdigit)
        {
            return Err(TagError::Malformed);
        }
        let original =
            Address::new(core, address.domain().clone()).map_err(|_| TagError::Malformed)?;
        Ok(Tag {
            key: bytes[0] - b'0',
            day: tag[1..4].parse().map_err(|_| TagError::Malformed)?,
            hash: &tag[4..],
            original,
        })
    }
}

/// The six hex digits of the tag.
fn signature(key: &hmac::Key, number: u8, day: u16, address: &str) -> String {
    let mut context = hmac::Context::with_key(key);
    context.update(format!("{number}{day:03}").as_bytes());
    context.update(address.to_lowercase().as_bytes());
    let tag = context.sign();
    tag.as_ref()[..3]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests;
