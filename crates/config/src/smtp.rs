//! `hostname` and `[smtp]`: our name, our domains and networks, and the session's limits.

use std::time::Duration;

use backstop_listener::IpNetwork;
use backstop_types::Domain;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::Ctx;
use crate::units::{secs, ByteSize, Seconds};

#[derive(Debug)]
pub struct Smtp {
    pub local_domains: Vec<Domain>,
    pub relay_domains: Vec<Domain>,
    pub local_networks: Vec<IpNetwork>,
    pub max_message_size: u64,
    /// Message data all sessions together may hold in memory; beyond it, DATA and BDAT get
    /// 452 4.3.1.
    pub max_message_memory: u64,
    /// Past this many octets a message being received goes to a spool file; only its header
    /// section stays in memory (and must end within it).
    pub spool_threshold: u64,
    pub max_recipients: usize,
    pub max_line_length: usize,
    pub max_errors: u32,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
    /// The slowest a DATA or BDAT transfer may be, in octets per second, beyond data_timeout.
    pub min_data_rate: u64,
    /// `Received:` fields a message may carry before it is refused as a loop.
    pub max_hops: usize,
    /// The command timeout while the server is near max_connections (Postfix's stress mode).
    pub stress_timeout: Duration,
    pub greeting_delay: Duration,
    /// On SIGTERM, how long a session in a transaction may take to finish it.
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    /// Per client address; an IPv6 client is its /64.
    pub max_connections_per_ip: usize,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSmtp {
    local_domains: Vec<Spanned<String>>,
    relay_domains: Vec<Spanned<String>>,
    local_networks: Vec<Spanned<String>>,
    max_message_size: ByteSize,
    max_message_memory: Spanned<ByteSize>,
    spool_threshold: Spanned<ByteSize>,
    max_recipients: Spanned<usize>,
    max_line_length: Spanned<usize>,
    max_errors: Spanned<u32>,
    command_timeout: Seconds,
    data_timeout: Seconds,
    min_data_rate: u64,
    max_hops: Spanned<usize>,
    stress_timeout: Spanned<Seconds>,
    greeting_delay: Seconds,
    shutdown_grace: Seconds,
    max_connections: Spanned<usize>,
    max_connections_per_ip: Spanned<usize>,
}

impl Default for RawSmtp {
    /// The defaults of Postfix where it has one (message size 50 MB like Stalwart rather than
    /// Postfix's 10 MB, which is too small for today's attachments).
    fn default() -> RawSmtp {
        let unspanned = |v| Spanned::new(0..0, v);
        RawSmtp {
            local_domains: Vec::new(),
            relay_domains: Vec::new(),
            local_networks: Vec::new(),
            max_message_size: ByteSize(50 * 1024 * 1024),
            max_message_memory: Spanned::new(0..0, ByteSize(1024 * 1024 * 1024)),
            spool_threshold: Spanned::new(0..0, ByteSize(SPOOL_THRESHOLD)),
            max_recipients: unspanned(100),
            max_line_length: unspanned(2048),
            max_errors: Spanned::new(0..0, 20),
            command_timeout: secs(300),
            data_timeout: secs(600),
            min_data_rate: 500,
            max_hops: unspanned(50),
            stress_timeout: Spanned::new(0..0, secs(10)),
            greeting_delay: secs(0),
            shutdown_grace: secs(30),
            max_connections: unspanned(1000),
            max_connections_per_ip: unspanned(50),
        }
    }
}

/// The default spool threshold: 256 KiB in memory per message at most, so 200 large messages
/// arriving at once hold about 50 MiB (Exim's `header_maxsize` is 1 MiB; a header section
/// longer than the threshold is refused).
const SPOOL_THRESHOLD: u64 = 256 * 1024;

pub(crate) fn check(ctx: &mut Ctx<'_>, raw: RawSmtp) -> Smtp {
    let local_domains = crate::domains(ctx, &raw.local_domains);
    let relay_domains = crate::domains(ctx, &raw.relay_domains);
    let mut local_networks = Vec::new();
    for n in &raw.local_networks {
        match n.get_ref().parse() {
            Ok(network) => local_networks.push(network),
            Err(e) => ctx.error(n.span(), "", format!("{e}")),
        }
    }
    let mut at_least = |value: &Spanned<usize>, min: usize, key: &str, why: &str| {
        if *value.get_ref() < min {
            ctx.error(value.span(), key, format!("must be at least {min}{why}"));
        }
    };
    at_least(&raw.max_recipients, 1, "smtp.max_recipients", "");
    at_least(
        &raw.max_line_length,
        512,
        "smtp.max_line_length",
        " (RFC 5321 4.5.3.1)",
    );
    at_least(&raw.max_hops, 1, "smtp.max_hops", "");
    at_least(&raw.max_connections, 1, "smtp.max_connections", "");
    at_least(
        &raw.max_connections_per_ip,
        1,
        "smtp.max_connections_per_ip",
        "",
    );
    if *raw.max_errors.get_ref() == 0 {
        ctx.error(
            raw.max_errors.span(),
            "smtp.max_errors",
            "must be at least 1",
        );
    }
    if raw.stress_timeout.get_ref().0.is_zero() {
        ctx.error(
            raw.stress_timeout.span(),
            "smtp.stress_timeout",
            "must be more than 0",
        );
    }
    // A message of the largest size must fit, with room for our header fields: below that,
    // such a message would be deferred for ever.
    let memory = raw.max_message_memory.get_ref().0;
    let least_memory = raw.max_message_size.0.saturating_add(1024 * 1024);
    if memory < least_memory {
        ctx.error(
            raw.max_message_memory.span(),
            "smtp.max_message_memory",
            format!(
                "must be at least smtp.max_message_size and 1 MiB more ({least_memory} octets), \
                 or a message of the largest size could never be taken"
            ),
        );
    }
    let spool_threshold = raw.spool_threshold.get_ref().0;
    if spool_threshold < 64 * 1024 {
        ctx.error(
            raw.spool_threshold.span(),
            "smtp.spool_threshold",
            "must be at least 64K (a message's header section must fit within it)",
        );
    }
    let defaults = RawSmtp::default();
    // A value reported above falls back to its default, so nothing downstream sees it.
    let or_default = |v: &Spanned<usize>, d: &Spanned<usize>, min: usize| {
        if *v.get_ref() < min {
            *d.get_ref()
        } else {
            *v.get_ref()
        }
    };
    Smtp {
        local_domains,
        relay_domains,
        local_networks,
        max_message_size: raw.max_message_size.0,
        max_message_memory: memory.max(least_memory),
        spool_threshold: spool_threshold.max(64 * 1024),
        max_recipients: or_default(&raw.max_recipients, &defaults.max_recipients, 1),
        max_line_length: or_default(&raw.max_line_length, &defaults.max_line_length, 512),
        max_errors: (*raw.max_errors.get_ref()).max(1),
        command_timeout: raw.command_timeout.0,
        data_timeout: raw.data_timeout.0,
        min_data_rate: raw.min_data_rate,
        max_hops: or_default(&raw.max_hops, &defaults.max_hops, 1),
        stress_timeout: match raw.stress_timeout.get_ref().0.is_zero() {
            true => defaults.stress_timeout.get_ref().0,
            false => raw.stress_timeout.get_ref().0,
        },
        greeting_delay: raw.greeting_delay.0,
        shutdown_grace: raw.shutdown_grace.0,
        max_connections: or_default(&raw.max_connections, &defaults.max_connections, 1),
        max_connections_per_ip: or_default(
            &raw.max_connections_per_ip,
            &defaults.max_connections_per_ip,
            1,
        ),
    }
}

/// The configured host name, or the machine's; a name without a dot is allowed (a test box)
/// but warned about: greetings, `Received:` and reports would carry it.
pub(crate) fn hostname(ctx: &mut Ctx<'_>, raw: Option<Spanned<String>>) -> String {
    let (name, span) = match raw {
        Some(h) => {
            let span = h.span();
            let h = h.into_inner();
            if let Err(e) = Domain::parse(&h) {
                ctx.error(span, "hostname", format!("{h:?}: {e}"));
                return system_hostname();
            }
            (h, span)
        }
        None => (system_hostname(), 0..0),
    };
    if !name.contains('.') {
        let whence = match span.is_empty() {
            true => "the machine's host name",
            false => "the host name",
        };
        ctx.warn(
            span,
            "hostname",
            format!(
                "{whence} {name:?} is not fully qualified: the greeting, Received: fields and \
                 reports will say {name:?}; set hostname = \"mx.example.com\" (the name of this \
                 host in DNS)"
            ),
        );
    }
    name
}

fn system_hostname() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    if Domain::parse(&name).is_ok() {
        name
    } else {
        "localhost".to_owned()
    }
}
