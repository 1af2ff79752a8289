//! The pieces backstop's web pages are built from: a small, hardened HTTP/1.1 server side,
//! HTML escaping, and signed tokens for quarantine release links.
//!
//! # Layout
//!
//! - [`http`]: one request per connection, read under strict limits ([`http::Limits`]) from
//!   a peer that may be hostile; a [`http::Response`] always carries the hardening headers
//!   (no caching, no referrer, no sniffing, no framing, a strict
//!   [`Content-Security-Policy`](http::CSP)); [`http::serve_one`] ties both together under a
//!   deadline.
//! - [`html`]: [`html::Html`] escapes untrusted text for element content and quoted
//!   attributes; [`html::page`] wraps a body in a minimal HTML5 document, styled by
//!   [`html::STYLE_CSS`].
//! - [`token`]: [`token::TokenKeys`] signs and verifies the capability tokens of quarantine
//!   release links (HMAC-SHA256, key rotation by key id, an expiry).
//!
//! # Architecture Invariants
//!
//! - The pages are served on loopback behind a reverse proxy that terminates TLS: this crate
//!   speaks plain HTTP/1.1 and nothing else (no keep-alive, no chunked bodies, no redirects).
//! - No storage: this crate does not depend on RocksDB, nor on any crate that does. Handlers
//!   live in the binary, which owns the queue.
//! - Nothing here reads a clock for decisions: [`token::TokenKeys::verify`] takes `now`.

#![forbid(unsafe_code)]

pub mod html;
pub mod http;
pub mod token;
