//! The in-session filter: what is decided while the client is still connected, so that a
//! refusal reaches the real sender through the sending server instead of becoming a bounce.
//!
//! Layout:
//! - [`cpu`]: CPU-heavy checks (rules, DKIM body hashes) off the async workers, bounded.
//! - [`content`]: RFC 5322 sanity of the whole message before the reply to DATA.
//! - [`pipeline`]: the configured content checks in order, under one deadline, with the
//!   changes they make ([`pipeline::Draft`]); its scanners: [`rules`] (regular expressions,
//!   attachments, MIME depth), [`milter`] (the sendmail milter protocol), [`rspamd`] (HTTP)
//!   and [`clamd`] (`INSTREAM`), reached at a [`net::Endpoint`].
//! - [`dns`]: the resolver configuration every DNS user shares (configured nameservers, or the
//!   system's).
//! - [`sender_auth`]: SPF, DKIM and DMARC (mail-auth) at the end of DATA, with an
//!   `Authentication-Results:` header for accepted mail.
//! - [`dovecot`]: AUTH against Dovecot's auth-client socket (its authentication protocol).
//! - [`dnsbl`]: DNS blocklists of client addresses, with per-list action and return codes.
//! - [`greylist`]: greylisting of (client network, sender, recipient) triplets, with auto-pass
//!   for networks that retried, in the site's [`backstop_state::State`].
//! - [`ldap`]: recipient validation against an LDAP directory, pooled and cached.
//! - [`provenance`]: the Message-ID of the original a bounce returns, for bounce provenance.
//! - [`rate`]: rate limits per client address and per user, counted in the site's [`backstop_state::State`].
//! - [`recipients`]: recipient validation at RCPT: the recipient table (addresses, catch-alls,
//!   aliases) and the [`recipients::Verdict`] every source answers with.
//!
//! Architecture invariant: a lookup that cannot answer is [`recipients::Verdict::Unavailable`]
//! (the client hears 451 and retries), never an accept.

pub mod clamd;
pub mod content;
pub mod cpu;
pub mod dns;
pub mod dnsbl;
pub mod dovecot;
pub mod error;
pub mod greylist;
pub mod ldap;
pub mod milter;
pub mod net;
pub mod pipeline;
pub mod provenance;
pub mod rate;
pub mod recipients;
pub mod rspamd;
pub mod rules;
pub mod sender_auth;
mod spooled;
