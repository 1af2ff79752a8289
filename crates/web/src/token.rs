//! Signed tokens for quarantine release links: a capability for one recipient of one queued
//! message, limited to some actions and a lifetime.
//!
//! A token is URL-safe base64 without padding of:
//!
//! | octets | field                               |
//! |--------|-------------------------------------|
//! | 1      | version, 1                          |
//! | 1      | key id, 0–9                         |
//! | 8      | queue id, big-endian                |
//! | 8      | expiry, unix seconds, big-endian    |
//! | 1      | actions ([`Actions`] bits)          |
//! | 2      | recipient length, big-endian        |
//! | n      | recipient, UTF-8, at most 320       |
//! | 16     | HMAC-SHA256 of all the above, cut   |
//!
//! Retired keys stay in [`TokenKeys`] until the tokens made with them have expired; only
//! the `sign_with` key signs. Pure: `now` is passed in.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;

/// The format version this module writes and reads.
const VERSION: u8 = 1;
/// The octets before the recipient.
const FIXED: usize = 1 + 1 + 8 + 8 + 1 + 2;
/// The octets of the MAC kept in a token.
const TAG_LEN: usize = 16;
/// The longest recipient, in octets (a 64-octet local part, `@`, a 255-octet domain).
pub const MAX_RECIPIENT: usize = 320;
/// The longest token [`TokenKeys::verify`] decodes, in characters.
pub const MAX_TOKEN: usize = 600;
/// The shortest secret [`TokenKeys::new`] accepts, in octets.
pub const MIN_SECRET: usize = 16;

/// What a token lets its holder do: a set of the constants below.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Actions(u8);

impl Actions {
    /// No action.
    pub const NONE: Actions = Actions(0);
    /// Release the message to the recipient.
    pub const RELEASE: Actions = Actions(1);
    /// Delete the message for the recipient.
    pub const DELETE: Actions = Actions(2);
    /// Release, and let the sender through from now on.
    pub const ALLOW_SENDER: Actions = Actions(4);
    /// Every action, for checking decoded bits.
    const ALL: u8 = 1 | 2 | 4;

    /// The set with these bits; `None` when a bit names no action.
    pub fn from_bits(bits: u8) -> Option<Actions> {
        (bits & !Actions::ALL == 0).then_some(Actions(bits))
    }

    /// The bits of the set.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether every action of `other` is in this set.
    pub fn contains(self, other: Actions) -> bool {
        self.0 & other.0 == other.0
    }

    /// The names of the actions in the set: `release`, `delete`, `allow-sender`.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (Actions::RELEASE, "release"),
            (Actions::DELETE, "delete"),
            (Actions::ALLOW_SENDER, "allow-sender"),
        ]
        .into_iter()
        .filter(|(a, _)| self.contains(*a))
        .map(|(_, name)| name)
        .collect()
    }
}

impl std::ops::BitOr for Actions {
    type Output = Actions;

    fn bitor(self, rhs: Actions) -> Actions {
        Actions(self.0 | rhs.0)
    }
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The key that signed the token.
    pub key_id: u8,
    /// The quarantined message.
    pub queue_id: u64,
    /// The recipient the token is for, as signed.
    pub recipient: String,
    /// What the holder may do.
    pub actions: Actions,
    /// The first moment, in unix seconds, the token no longer works.
    pub expires: u64,
}

/// Why keys were refused, a token could not be made, or a token did not verify. The
/// messages of a refused token are generic enough to show on a user's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A key id beyond 9.
    #[error("token key id {0} is not between 0 and 9")]
    KeyIdOutOfRange(u8),
    /// A key id given twice.
    #[error("token key {0} is given twice")]
    DuplicateKeyId(u8),
    /// A secret shorter than [`MIN_SECRET`].
    #[error("token key {0} is shorter than 16 bytes")]
    SecretTooShort(u8),
    /// The signing key is not among the keys.
    #[error("the token signing key {0} is not among the keys")]
    NoSigningKey(u8),
    /// A recipient longer than [`MAX_RECIPIENT`] cannot be signed.
    #[error("the recipient is too long for a token")]
    RecipientTooLong,
    /// A token longer than [`MAX_TOKEN`].
    #[error("this link is not valid: it is too long")]
    TooLong,
    /// Not URL-safe base64 without padding.
    #[error("this link is not valid: it is damaged")]
    BadEncoding,
    /// A version other than 1.
    #[error("this link is not valid: it comes from an unsupported version")]
    BadVersion,
    /// A key id we do not have (anymore).
    #[error("this link is no longer valid")]
    UnknownKey,
    /// Too short, too long, or a recipient length that does not match.
    #[error("this link is not valid: it is incomplete")]
    BadLength,
    /// The MAC does not match.
    #[error("this link is not valid: its signature does not match")]
    BadSignature,
    /// The recipient is not UTF-8.
    #[error("this link is not valid: its recipient is malformed")]
    BadRecipient,
    /// Action bits that name no action.
    #[error("this link is not valid: it grants an unknown action")]
    BadActions,
    /// The expiry has passed.
    #[error("this link has expired")]
    Expired,
}

/// The keys, by id, and which one signs.
#[derive(Clone)]
pub struct TokenKeys {
    keys: Vec<(u8, hmac::Key)>,
    sign_with: u8,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        let ids: Vec<u8> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("TokenKeys")
            .field("ids", &ids)
            .field("sign_with", &self.sign_with)
            .finish()
    }
}

impl TokenKeys {
    /// `keys` are (id, secret) pairs: ids 0–9, each once, secrets of at least
    /// [`MIN_SECRET`] octets; `sign_with` must be one of the ids.
    pub fn new(keys: Vec<(u8, Vec<u8>)>, sign_with: u8) -> Result<TokenKeys, TokenError> {
        let mut built: Vec<(u8, hmac::Key)> = Vec::with_capacity(keys.len());
        for (id, secret) in keys {
            if id > 9 {
                return Err(TokenError::KeyIdOutOfRange(id));
            }
            if built.iter().any(|(seen, _)| *seen == id) {
                return Err(TokenError::DuplicateKeyId(id));
            }
            if secret.len() < MIN_SECRET {
                return Err(TokenError::SecretTooShort(id));
            }
            built.push((id, hmac::Key::new(hmac::HMAC_SHA256, &secret)));
        }
        if !built.iter().any(|(id, _)| *id == sign_with) {
            return Err(TokenError::NoSigningKey(sign_with));
        }
        Ok(TokenKeys {
            keys: built,
            sign_with,
        })
    }

    /// A token for `recipient` of message `queue_id`, granting `actions` until `expires`
    /// (unix seconds), signed with the `sign_with` key.
    pub fn sign(
        &self,
        queue_id: u64,
        recipient: &str,
        actions: Actions,
        expires: u64,
    ) -> Result<String, TokenError> {
        let recipient_len = u16::try_from(recipient.len())
            .ok()
            .filter(|n| usize::from(*n) <= MAX_RECIPIENT)
            .ok_or(TokenError::RecipientTooLong)?;
        let key = self
            .key(self.sign_with)
            .ok_or(TokenError::NoSigningKey(self.sign_with))?;
        let mut raw = Vec::with_capacity(FIXED + recipient.len() + TAG_LEN);
        raw.push(VERSION);
        raw.push(self.sign_with);
        raw.extend_from_slice(&queue_id.to_be_bytes());
        raw.extend_from_slice(&expires.to_be_bytes());
        raw.push(actions.bits());
        raw.extend_from_slice(&recipient_len.to_be_bytes());
        raw.extend_from_slice(recipient.as_bytes());
        let tag = hmac::sign(key, &raw);
        raw.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
        Ok(URL_SAFE_NO_PAD.encode(raw))
    }

    /// The claims of `token` if it is well-formed, signed by one of our keys, and not
    /// expired at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN {
            return Err(TokenError::TooLong);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::BadEncoding)?;
        let header = Header::parse(&raw).ok_or(TokenError::BadLength)?;
        if header.version != VERSION {
            return Err(TokenError::BadVersion);
        }
        let key = self.key(header.key_id).ok_or(TokenError::UnknownKey)?;
        let recipient_len = usize::from(header.recipient_len);
        if recipient_len > MAX_RECIPIENT || raw.len() != FIXED + recipient_len + TAG_LEN {
            return Err(TokenError::BadLength);
        }
        let (signed, given_tag) = raw.split_at(FIXED + recipient_len);
        let expected = hmac::sign(key, signed);
        // In constant time, so the tag cannot be guessed octet by octet from the time a
        // refusal takes. Both are TAG_LEN octets (checked above).
        if !backstop_types::secret::same_secret(&expected.as_ref()[..TAG_LEN], given_tag) {
            return Err(TokenError::BadSignature);
        }
        // Authenticated from here on: only our signer could have written what follows.
        let recipient = std::str::from_utf8(&signed[FIXED..])
            .map_err(|_| TokenError::BadRecipient)?
            .to_owned();
        let actions = Actions::from_bits(header.actions).ok_or(TokenError::BadActions)?;
        if header.expires <= now {
            return Err(TokenError::Expired);
        }
        Ok(Claims {
            key_id: header.key_id,
            queue_id: header.queue_id,
            recipient,
            actions,
            expires: header.expires,
        })
    }

    fn key(&self, id: u8) -> Option<&hmac::Key> {
        self.keys.iter().find(|(k, _)| *k == id).map(|(_, key)| key)
    }
}

/// The fixed fields at the start of a decoded token, not yet authenticated.
struct Header {
    version: u8,
    key_id: u8,
    queue_id: u64,
    expires: u64,
    actions: u8,
    recipient_len: u16,
}

impl Header {
    /// The fields, or `None` when `raw` is shorter than them.
    fn parse(raw: &[u8]) -> Option<Header> {
        let (&version, rest) = raw.split_first()?;
        let (&key_id, rest) = rest.split_first()?;
        let (queue_id, rest) = rest.split_first_chunk::<8>()?;
        let (expires, rest) = rest.split_first_chunk::<8>()?;
        let (&actions, rest) = rest.split_first()?;
        let (recipient_len, _) = rest.split_first_chunk::<2>()?;
        Some(Header {
            version,
            key_id,
            queue_id: u64::from_be_bytes(*queue_id),
            expires: u64::from_be_bytes(*expires),
            actions,
            recipient_len: u16::from_be_bytes(*recipient_len),
        })
    }
}

#[cfg(test)]
mod tests;
