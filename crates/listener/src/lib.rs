//! The network side of the SMTP server: tokio accept loops, TLS, AUTH and connection limits.
//! It drives a [`backstop_session::ServerSession`] per connection and knows nothing of storage:
//! accepted messages go to a [`MessageSink`], and in-session checks to a [`Policy`] (both
//! traits of `backstop-session`), provided by the binary.
//!
//! Layout:
//! - [`server`]: [`serve`], the accept loops for already-bound sockets, and the per-connection
//!   driver that turns session outputs into socket I/O.
//! - [`tls`]: the rustls server config, in the server's order of cipher suites: certificate
//!   and key from files, or a self-signed certificate for the host name kept under the data
//!   directory and renewed at load when it expires within 60 days.
//! - [`users`]: the AUTH user file (argon2 or SHA-512-crypt hashes, never plain text).
//! - [`bind`]: listening sockets, with `IPV6_V6ONLY` where an IPv4 listener shares the port.
//! - [`limits`]: connection limits (total and per client, an IPv6 client as its /64), stress
//!   mode, client networks, and the unmapping of IPv4-mapped addresses.
//! - [`local_user`]: the name of a Unix user (the local submission socket's peer), from
//!   `/etc/passwd`.
//! - `spool`: the file a large message is written into as it arrives (in the queue's
//!   `spool/incoming/`), removed when its transaction is over unless the queue took it.
//! - [`auth_limits`]: failed logins counted per client and per name across connections, with
//!   a growing delay and then `454 4.7.0`; password checks bounded.

pub mod auth_limits;
pub mod bind;
pub mod limits;
pub mod local_user;
pub mod metrics;
pub mod server;
mod spool;
pub mod tls;
pub mod users;

pub use backstop_session::{MessageSink, Policy};
pub use limits::{ConnectionLimits, IpNetwork};
pub use server::{
    serve, Context, Listener, ListenerMode, ListenerSettings, LocalListener, LocalSenders,
};
pub use users::UserStore;
