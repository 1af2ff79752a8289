//! End-to-end tests of the `backstop` binary with real clients and peers on loopback.
//!
//! Each test starts the real binary on a fresh data directory with listeners on port 0, talks
//! to it with a real client (swaks, Python's smtplib, a raw socket for protocol abuse, Postfix
//! as a sending MTA, testssl.sh as a TLS scanner) and checks the queue on disk afterwards. Peers that are missing make a
//! test fail in CI (`CI` set) and skip loudly elsewhere; `cargo xtask test` installs them.

mod browser;
mod dns;
mod harness;

mod address;
mod admin;
mod batv;
mod bounces;
mod callahead;
mod cli;
mod cluster;
mod content;
mod crash;
mod delivery;
mod disk_full;
mod dkim;
mod fail2ban;
mod greylist;
mod hostile;
mod ldap;
mod limits;
mod lmtp;
mod metrics;
mod monitoring;
mod mx;
mod postfix;
mod proxy;
mod quarantine;
mod rates;
mod receive;
mod recipients;
mod relay;
mod roles;
mod scanners;
mod sender_auth;
mod sendmail;
mod signals;
mod smarthost;
mod smuggling;
mod spool;
mod submission;
mod systemd;
mod tls;
