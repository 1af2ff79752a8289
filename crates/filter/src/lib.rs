//! The in-session filter: what is decided while the client is still connected, so that a
//! refusal reaches the real sender through the sending server instead of becoming a bounce.
//!
//! Layout:
//! - [`content`]: built-in content checks on the whole message before the reply to DATA
//!   (RFC 5322 sanity).
//! - [`dns`]: the resolver configuration every DNS user shares (configured nameservers, or the
//!   system's).
//! - [`sender_auth`]: SPF, DKIM and DMARC (mail-auth) at the end of DATA, with an
//!   `Authentication-Results:` header for accepted mail.
//! - [`dnsbl`]: DNS blocklists of client addresses, with per-list action and return codes.
//! - [`greylist`]: greylisting of (client network, sender, recipient) triplets, with auto-pass
//!   for networks that retried, over a [`greylist::GreyStore`].
//! - [`ldap`]: recipient validation against an LDAP directory, pooled and cached.
//! - [`provenance`]: the Message-ID of the original a bounce returns, for bounce provenance.
//! - [`rate`]: rate limits per client address and per user, over a [`rate::RateStore`].
//! - [`recipients`]: recipient validation at RCPT: the recipient table (addresses, catch-alls,
//!   aliases) and the [`recipients::Verdict`] every source answers with.
//!
//! Architecture invariant: a lookup that cannot answer is [`recipients::Verdict::Unavailable`]
//! (the client hears 451 and retries), never an accept.

pub mod content;
pub mod dns;
pub mod dnsbl;
pub mod greylist;
pub mod ldap;
pub mod provenance;
pub mod rate;
pub mod recipients;
pub mod sender_auth;
