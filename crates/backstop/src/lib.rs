//! The backstop mail transfer agent, assembled: the library behind the `backstop` command and
//! the in-process tests. [`Server`] binds and runs everything a config describes.
//!
//! Layout:
//! - [`load`]: the config (checked by `backstop_config`) and the files it names, read; every
//!   problem of both with file, line and key.
//! - [`serve`]: wiring: [`Server::bind`] and [`Server::run`], and `backstop serve` (tracing,
//!   runtime, signals) around them; `smtp_context` builds the site's policy
//!   (`backstop_policy::SitePolicy`) and the sessions' rules from the config, `delivery_agent`
//!   the delivery side.
//! - `sink`: the queue as the sessions' message sink and as the policy's store.
//! - `reload`: SIGHUP, and the recipient table reloaded when its file changes.
//! - `logging`, `signals`: the log (level changed on reload; each line with its syslog priority
//!   when standard error is the journal) and the signals.
//! - [`notify`]: systemd's `Type=notify` readiness messages (`READY=1`, `RELOADING=1`,
//!   `STOPPING=1`).
//! - `metrics`: `GET /metrics` on the configured address.
//! - [`address_test`]: `backstop address test`, answered by the running server: the RCPT
//!   rules, the recipient checks explained without their side effects, and the route.
//! - [`admin`]: the admin API on a Unix socket, and the `queue` and `quarantine` commands that
//!   talk to it.
//! - [`batv`]: BATV keys from the config (made on first use by default), `batv sign|verify`.
//! - [`report`]: `backstop report`, a summary of the log (pflogsumm's).
//! - [`sendmail`]: `backstop sendmail` (and `backstop` run as `sendmail`): sendmail's command
//!   line, submitting through the server's local socket as the Unix user it runs as.
//! - [`man`]: the man pages, generated from the command line (`backstop man DIR`).
//! - `interfaces`: this host's addresses, which delivery never connects to.
//!
//! No check is implemented here: the order of checks is `backstop_policy`'s, the checks are
//! `backstop_filter`'s (`cargo xtask tidy` holds to it).

pub mod address_test;
pub mod admin;
pub mod batv;
mod console;
mod interfaces;
pub mod load;
mod logging;
pub mod man;
mod metrics;
pub mod notify;
pub mod quarantine;
mod reload;
pub mod report;
pub mod sendmail;
pub mod serve;
mod signals;
mod sink;
mod smtp;

pub use logging::LogControl;
pub use serve::{Reload, Server};
