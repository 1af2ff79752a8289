//! The configuration file: TOML read into [`RawConfig`] (serde, unknown keys refused), then
//! checked into [`Config`] of validated values. Every error names the file, the line and the key.
//!
//! The embedded default ([`DEFAULT`]) is `etc/backstop.toml`, so the file admins read is the one
//! the binary runs on when started without `--config`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backstop_filter::rate::Limit;
use backstop_listener::IpNetwork;
use backstop_types::Domain;
use serde::Deserialize;
use toml::Spanned;

/// The embedded default configuration.
pub const DEFAULT: &str = include_str!("../../../etc/backstop.toml");
/// How the embedded default is named in messages.
pub const DEFAULT_NAME: &str = "<embedded default config>";

/// A configuration that cannot be used.
#[derive(Debug)]
pub struct ConfigError {
    file: String,
    /// 1-based; `None` when the error is about the file as a whole.
    line: Option<usize>,
    key: Option<String>,
    message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The checked configuration.
#[derive(Debug)]
pub struct Config {
    pub hostname: String,
    pub data_dir: PathBuf,
    pub smtp: Smtp,
    pub tls: Tls,
    pub auth: Auth,
    pub listeners: Vec<ListenerConfig>,
    pub queue: QueueConfig,
    /// The recipient table, loaded; `None`: every local part of a local domain is accepted.
    pub recipients: Option<backstop_filter::recipients::TableFile>,
    /// Greylisting of unauthenticated clients, when enabled.
    pub greylist: Option<backstop_filter::greylist::GreylistPolicy>,
    pub rate_limits: RateLimits,
    /// What to do with messages that are not well-formed RFC 5322.
    pub rfc5322: ContentAction,
    /// The content checks (`[[filter]]`), in order, and the deadline of a whole run.
    pub content_checks: Vec<backstop_filter::pipeline::Check>,
    pub content_deadline: Duration,
    /// Where local domains' mail is delivered: Maildirs under this directory.
    pub maildir: PathBuf,
    /// Accept and queue, but deliver nothing (maintenance, like Postfix's defer_transports).
    pub delivery_paused: bool,
    /// Routes for domains that are not local, first match wins.
    pub routes: Vec<RouteConfig>,
    pub delivery: DeliveryConfig,
    /// Nameservers for delivery's MX lookups; empty: the system's.
    /// The resolver's nameservers, timeout and attempts.
    pub dns: backstop_filter::dns::Settings,
    /// BATV tags on the return path of our users' mail; `None` when turned off.
    pub batv: Option<Batv>,
    /// Refuse bounces to local addresses without a valid tag (with BATV on).
    pub batv_check_bounces: bool,
    /// Addresses (`user@domain`) and domains (`@domain`) that take untagged bounces.
    pub batv_exempt: Vec<String>,
    /// An LDAP directory of recipients for the local domains, when configured.
    pub ldap: Option<backstop_filter::ldap::LdapConfig>,
    /// Callahead: the probe sender, and how long answers are remembered (exists, unknown).
    pub callahead_sender: backstop_types::Address,
    pub callahead_ttl: (Duration, Duration),
    /// Refuse bounces that return a message we never sent (when BATV does not check bounces).
    pub bounce_provenance: bool,
    /// The domains it applies to; empty: every local domain.
    pub bounce_provenance_domains: Vec<Domain>,
    /// DNS blocklists asked about untrusted clients at MAIL FROM.
    pub dnsbl: Vec<backstop_filter::dnsbl::List>,
    /// SPF, DKIM and DMARC of untrusted clients' mail; `None` when off.
    pub sender_checks: Option<backstop_filter::sender_auth::Actions>,
    /// DKIM keys for our users' mail, by From domain.
    pub dkim: std::sync::Arc<backstop_delivery::dkim::Keys>,
    pub admin: AdminEndpoint,
    /// Where `GET /metrics` is answered; `None`: only `backstop metrics`.
    pub metrics: Option<SocketAddr>,
    pub log: Log,
}

/// What a content check does with a message that fails it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ContentAction {
    /// No check.
    #[default]
    Off,
    /// 550 5.6.0 before the reply to DATA: the sending server reports it to the sender.
    Reject,
    /// Accept it into quarantine: never delivered, never bounced.
    Quarantine,
}

/// A route: recipients in `domains` (or in any domain) go to a fixed next hop or by MX.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub domains: Vec<Domain>,
    pub any_domain: bool,
    /// The fixed next hop; `None`: the recipient domain's MX hosts.
    pub relay: Option<backstop_smtp_client::NextHop>,
    /// LMTP instead of SMTP.
    pub lmtp: bool,
    pub tls: backstop_smtp_client::TlsPolicy,
    pub auth: Option<backstop_smtp_client::Credentials>,
    /// Recipients in this route's domains are verified at RCPT by asking its relay.
    pub callahead: bool,
    /// Transactions for this route's domains are passed through to its relay in-session:
    /// its replies are the client's, nothing is queued.
    pub proxy: bool,
}

/// How delivery connects.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// The port of MX hosts: 25, but in tests.
    pub mx_port: u16,
    pub connect_timeout: Duration,
    /// Connections delivery opens at once, in all and to one destination.
    pub max_connections: usize,
    pub max_connections_per_destination: usize,
    /// Where a destination's concurrency window starts.
    pub initial_window: usize,
    /// Connection-level failures in a row that mark a destination down, and for how long.
    pub dead_after: u32,
    pub dead_backoff: Duration,
    /// Messages leased and not yet recorded, at most.
    pub max_in_flight: usize,
}

/// Where the BATV keys come from.
#[derive(Debug, Clone)]
pub enum Batv {
    /// Keys from the files the config names.
    Keys(Box<backstop_batv::Keys>),
    /// No key named: key 0 from this file, made with a random secret on first use.
    Generated { file: PathBuf, lifetime_days: u16 },
}

/// Rate limits; `None` means no limit. Client limits apply to clients that neither
/// authenticated nor are in the local networks; user limits to authenticated users.
#[derive(Debug, Clone, Default)]
pub struct RateLimits {
    pub client_connections: Option<Limit>,
    pub client_messages: Option<Limit>,
    pub client_recipients: Option<Limit>,
    pub user_messages: Option<Limit>,
    pub user_recipients: Option<Limit>,
}

impl RateLimits {
    pub fn any(&self) -> bool {
        [
            self.client_connections,
            self.client_messages,
            self.client_recipients,
            self.user_messages,
            self.user_recipients,
        ]
        .iter()
        .any(Option::is_some)
    }
}

/// Where the admin API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminEndpoint {
    /// A Unix socket only its owner may use (the default: `data_dir/admin.sock`).
    Unix(PathBuf),
    /// HTTP on a loopback address; every request must carry `Authorization: Bearer <token>`.
    Http { address: SocketAddr, token: String },
}

/// How the queue retries and keeps messages.
#[derive(Debug)]
pub struct QueueConfig {
    pub retry: backstop_queue::RetryPolicy,
    /// When to tell a sender that a message is delayed, after arrival. Only senders the
    /// bounce gate trusts ever get such a notice; empty means never.
    pub delay_warnings: Vec<Duration>,
    /// How long quarantined messages are kept before they are deleted.
    pub quarantine_retention: Duration,
}

#[derive(Debug)]
pub struct Smtp {
    pub local_domains: Vec<Domain>,
    pub relay_domains: Vec<Domain>,
    pub local_networks: Vec<IpNetwork>,
    pub max_message_size: u64,
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

#[derive(Debug)]
pub enum Tls {
    /// Certificate chain and key from PEM files.
    Files { cert: PathBuf, key: PathBuf },
    /// None configured: a self-signed one under the data directory.
    SelfSigned,
}

#[derive(Debug)]
pub struct Auth {
    /// `name:hash` lines; see `backstop_listener::users`.
    pub users_file: Option<PathBuf>,
    /// Users given in the config itself, as `name:hash` lines (with the line they came from).
    pub inline_users: String,
    /// Offer AUTH without TLS. Off unless explicitly configured.
    pub allow_plaintext: bool,
    /// Hold authenticated users to the envelope senders they own.
    pub restrict_sender: bool,
    /// Logins the users file does not know: a search for the entry, then a bind as it.
    pub ldap: Option<backstop_filter::ldap::LdapConfig>,
    /// Or: logins the users file does not know, checked by Dovecot (its auth-client socket).
    pub dovecot: Option<backstop_filter::dovecot::DovecotAuth>,
    /// Failed logins allowed per client and per name, the delays, the checks at once.
    pub limits: backstop_listener::auth_limits::AuthLimitConfig,
}

#[derive(Debug)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub kind: ListenerKind,
}

/// The three listener roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// Port 25 style: mail for our domains from anyone; STARTTLS offered, no AUTH.
    Mx,
    /// Port 587: STARTTLS, then AUTH required before MAIL (RFC 6409).
    Submission,
    /// Port 465: implicit TLS, AUTH required (RFC 8314).
    Submissions,
}

impl ListenerKind {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Mx => "mx",
            ListenerKind::Submission => "submission",
            ListenerKind::Submissions => "submissions",
        }
    }
}

#[derive(Debug)]
pub struct Log {
    /// A tracing filter such as `info` or `backstop=debug,info`.
    pub level: String,
    /// One JSON object per line (with the session's and the delivery's span fields) instead
    /// of text.
    pub json: bool,
}

// --- The raw form ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Our name in greetings and `Received:`; the machine's host name when absent.
    hostname: Option<Spanned<String>>,
    /// Where the queue and generated files live; relative to the working directory.
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    smtp: RawSmtp,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    auth: RawAuth,
    listener: Spanned<Vec<RawListener>>,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    recipients: RawRecipients,
    ldap: Option<RawLdap>,
    #[serde(default)]
    greylist: RawGreylist,
    #[serde(default)]
    rate_limits: RawRateLimits,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    content: RawContent,
    #[serde(default)]
    filter: Vec<RawFilter>,
    #[serde(default)]
    route: Vec<RawRoute>,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    batv: RawBatv,
    #[serde(default)]
    dkim: Vec<RawDkim>,
    #[serde(default)]
    sender_checks: RawSenderChecks,
    #[serde(default)]
    dnsbl: Vec<RawDnsbl>,
    #[serde(default)]
    bounce_provenance: RawBounceProvenance,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQueue {
    min_backoff: Seconds,
    max_backoff: Seconds,
    lifetime: Seconds,
    delay_warnings: Vec<Seconds>,
    quarantine_retention: Seconds,
}

impl Default for RawQueue {
    /// Postfix's retry shape (5 minutes doubling to an hour, 5 days in all), no delay notices,
    /// and a month of quarantine.
    fn default() -> RawQueue {
        RawQueue {
            min_backoff: Seconds(Duration::from_secs(300)),
            max_backoff: Seconds(Duration::from_secs(3600)),
            lifetime: Seconds(Duration::from_secs(5 * 86_400)),
            delay_warnings: Vec::new(),
            quarantine_retention: Seconds(Duration::from_secs(30 * 86_400)),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawContent {
    #[serde(default)]
    rfc5322: ContentAction,
    deadline: Option<Seconds>,
}

/// One `[[filter]]`: a rule or a scanner; which keys apply depends on `type`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    /// `header`: the field to match (any field when absent).
    header: Option<String>,
    pattern: Option<Spanned<String>>,
    #[serde(default)]
    extensions: Vec<String>,
    #[serde(default)]
    mime_types: Vec<String>,
    max: Option<usize>,
    action: Option<Spanned<String>>,
    /// The text of a reject or tempfail.
    message: Option<String>,
    /// Required for `action = "discard"`.
    #[serde(default)]
    certain: bool,
    /// `milter`, `rspamd`, `clamd`: where it listens.
    address: Option<Spanned<String>>,
    on_error: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    /// Domains, or "*" for every domain no earlier route and no local domain covers.
    domains: Vec<Spanned<String>>,
    /// The next hop, `address:port` or `unix:/path`; or else `mx = true`.
    relay: Option<Spanned<String>>,
    /// Deliver to the recipient domain's MX hosts.
    mx: Option<Spanned<bool>>,
    /// The next hop's name (for TLS); the address when absent.
    host: Option<String>,
    /// "smtp" (the default) or "lmtp".
    #[serde(default)]
    protocol: Protocol,
    /// "may" (the default), "require" or "none".
    tls: Option<Spanned<RouteTls>>,
    /// Trust anchors for `tls = "require"`, PEM; the system's bundle when absent.
    tls_ca_file: Option<Spanned<PathBuf>>,
    /// Verify recipients at RCPT by asking this relay (callahead).
    #[serde(default)]
    callahead: bool,
    /// Proxy mode: pass each transaction through to the relay while the client waits.
    #[serde(default)]
    proxy: bool,
    /// SMTP AUTH at a relay (a smarthost): the user, and a file holding the password.
    auth_user: Option<Spanned<String>>,
    auth_password_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RouteTls {
    None,
    #[default]
    May,
    Require,
}

/// Debian's bundle of the system's trusted CAs.
const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    /// `address:port` of each; the system's (/etc/resolv.conf) when empty.
    #[serde(default)]
    nameservers: Vec<Spanned<String>>,
    timeout: Option<Seconds>,
    attempts: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBatv {
    enabled: bool,
    sign_with: Spanned<u8>,
    lifetime_days: Spanned<u16>,
    key: Vec<RawBatvKey>,
    check_bounces: bool,
    exempt: Vec<Spanned<String>>,
}

impl Default for RawBatv {
    fn default() -> RawBatv {
        RawBatv {
            enabled: true,
            sign_with: Spanned::new(0..0, 0),
            lifetime_days: Spanned::new(0..0, 7),
            key: Vec::new(),
            check_bounces: true,
            exempt: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatvKey {
    number: u8,
    secret_file: Spanned<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBounceProvenance {
    enabled: bool,
    domains: Vec<Spanned<String>>,
}

impl Default for RawBounceProvenance {
    fn default() -> RawBounceProvenance {
        RawBounceProvenance {
            enabled: true,
            domains: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDnsbl {
    zone: Spanned<String>,
    #[serde(default = "reject")]
    action: ListAction,
    #[serde(default)]
    codes: Vec<Spanned<String>>,
}

fn reject() -> ListAction {
    ListAction::Reject
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ListAction {
    Reject,
    Log,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSenderChecks {
    enabled: bool,
    dmarc_reject: CheckAction,
    dmarc_quarantine: CheckAction,
    spf_fail: CheckAction,
    dns_error: DnsErrorAction,
    iprev_fail: CheckAction,
    spf_at_mail: bool,
    trusted_arc_sealers: Vec<String>,
}

impl Default for RawSenderChecks {
    fn default() -> RawSenderChecks {
        RawSenderChecks {
            enabled: true,
            dmarc_reject: CheckAction::Reject,
            dmarc_quarantine: CheckAction::Quarantine,
            spf_fail: CheckAction::Reject,
            dns_error: DnsErrorAction::Tempfail,
            iprev_fail: CheckAction::Accept,
            spf_at_mail: false,
            trusted_arc_sealers: Vec::new(),
        }
    }
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum CheckAction {
    Reject,
    Quarantine,
    Accept,
}

impl From<CheckAction> for backstop_filter::sender_auth::Action {
    fn from(a: CheckAction) -> Self {
        match a {
            CheckAction::Reject => Self::Reject,
            CheckAction::Quarantine => Self::Quarantine,
            CheckAction::Accept => Self::Accept,
        }
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum DnsErrorAction {
    Tempfail,
    Accept,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkim {
    domain: Spanned<String>,
    selector: String,
    key_file: Spanned<PathBuf>,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Protocol {
    #[default]
    Smtp,
    Lmtp,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDelivery {
    maildir: PathBuf,
    paused: bool,
    mx_port: u16,
    connect_timeout: Seconds,
    max_connections: Option<Spanned<usize>>,
    max_connections_per_destination: Option<Spanned<usize>>,
    initial_concurrency: Option<Spanned<usize>>,
    dead_after: Option<Spanned<usize>>,
    dead_backoff: Seconds,
    max_in_flight: Option<Spanned<usize>>,
}

impl Default for RawDelivery {
    fn default() -> RawDelivery {
        RawDelivery {
            maildir: PathBuf::from("maildir"),
            paused: false,
            mx_port: 25,
            // Postfix's smtp_connect_timeout.
            connect_timeout: Seconds(Duration::from_secs(30)),
            max_connections: None,
            max_connections_per_destination: None,
            initial_concurrency: None,
            dead_after: None,
            // Postfix's minimal_backoff_time.
            dead_backoff: Seconds(Duration::from_secs(300)),
            max_in_flight: None,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRateLimits {
    client_connections: Option<Spanned<String>>,
    client_messages: Option<Spanned<String>>,
    client_recipients: Option<Spanned<String>>,
    user_messages: Option<Spanned<String>>,
    user_recipients: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawGreylist {
    enabled: bool,
    delay: Seconds,
    retry_window: Seconds,
    auto_pass: Seconds,
}

impl Default for RawGreylist {
    /// Off; when on, postgrey's long-standing values: 5 minutes, 2 days, 35 days.
    fn default() -> RawGreylist {
        RawGreylist {
            enabled: false,
            delay: Seconds(Duration::from_secs(300)),
            retry_window: Seconds(Duration::from_secs(2 * 86_400)),
            auto_pass: Seconds(Duration::from_secs(35 * 86_400)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLdap {
    url: Spanned<String>,
    base: String,
    #[serde(default = "mail_filter")]
    filter: Spanned<String>,
    bind_dn: Option<String>,
    bind_password_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    starttls: bool,
    tls_ca_file: Option<Spanned<PathBuf>>,
    #[serde(default = "ten_seconds")]
    timeout: Seconds,
    #[serde(default = "ten_minutes")]
    positive_ttl: Seconds,
    #[serde(default = "one_minute")]
    negative_ttl: Seconds,
    /// For logins ([auth.ldap]): the attribute listing a user's addresses.
    #[serde(default = "mail_attribute")]
    address_attribute: String,
}

fn mail_attribute() -> String {
    "mail".to_owned()
}

fn mail_filter() -> Spanned<String> {
    Spanned::new(0..0, "(mail=%s)".to_owned())
}

fn ten_seconds() -> Seconds {
    Seconds(Duration::from_secs(10))
}

fn one_minute() -> Seconds {
    Seconds(Duration::from_secs(60))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecipients {
    table: Option<Spanned<PathBuf>>,
    /// The MAIL FROM of callahead probes; postmaster@<hostname> when absent. Never <>.
    callahead_sender: Option<Spanned<String>>,
    #[serde(default = "one_hour")]
    callahead_positive_ttl: Seconds,
    #[serde(default = "ten_minutes")]
    callahead_negative_ttl: Seconds,
}

impl Default for RawRecipients {
    fn default() -> RawRecipients {
        RawRecipients {
            table: None,
            callahead_sender: None,
            callahead_positive_ttl: one_hour(),
            callahead_negative_ttl: ten_minutes(),
        }
    }
}

fn one_hour() -> Seconds {
    Seconds(Duration::from_secs(3600))
}

fn ten_minutes() -> Seconds {
    Seconds(Duration::from_secs(600))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    address: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    socket: PathBuf,
    http: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
}

impl Default for RawAdmin {
    fn default() -> RawAdmin {
        RawAdmin {
            socket: PathBuf::from("admin.sock"),
            http: None,
            token_file: None,
        }
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("var")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSmtp {
    local_domains: Vec<Spanned<String>>,
    relay_domains: Vec<Spanned<String>>,
    local_networks: Vec<Spanned<String>>,
    max_message_size: ByteSize,
    max_recipients: usize,
    max_line_length: usize,
    max_errors: u32,
    command_timeout: Seconds,
    data_timeout: Seconds,
    min_data_rate: u64,
    max_hops: usize,
    stress_timeout: Seconds,
    greeting_delay: Seconds,
    shutdown_grace: Seconds,
    max_connections: usize,
    max_connections_per_ip: usize,
}

impl Default for RawSmtp {
    /// The defaults of Postfix where it has one (message size 50 MB like Stalwart rather than
    /// Postfix's 10 MB, which is too small for today's attachments).
    fn default() -> RawSmtp {
        RawSmtp {
            local_domains: Vec::new(),
            relay_domains: Vec::new(),
            local_networks: Vec::new(),
            max_message_size: ByteSize(50 * 1024 * 1024),
            max_recipients: 100,
            max_line_length: 2048,
            max_errors: 20,
            command_timeout: Seconds(Duration::from_secs(300)),
            data_timeout: Seconds(Duration::from_secs(600)),
            min_data_rate: 500,
            max_hops: 50,
            stress_timeout: Seconds(Duration::from_secs(10)),
            greeting_delay: Seconds(Duration::ZERO),
            shutdown_grace: Seconds(Duration::from_secs(30)),
            max_connections: 1000,
            max_connections_per_ip: 50,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    users_file: Option<Spanned<PathBuf>>,
    user: Vec<RawUser>,
    allow_plaintext: bool,
    restrict_sender: bool,
    /// Logins the users file does not know, checked against a directory.
    ldap: Option<RawLdap>,
    /// ...or by Dovecot, at its auth-client socket.
    dovecot: Option<Spanned<String>>,
    dovecot_timeout: Seconds,
    max_failures: u32,
    failure_window: Seconds,
    max_failure_delay: Seconds,
    max_concurrent_checks: usize,
}

impl Default for RawAuth {
    /// Also what a config without an `[auth]` section gets: senders restricted, the limits
    /// on password guessing on.
    fn default() -> RawAuth {
        let limits = backstop_listener::auth_limits::AuthLimitConfig::default();
        RawAuth {
            users_file: None,
            user: Vec::new(),
            allow_plaintext: false,
            restrict_sender: true,
            ldap: None,
            dovecot: None,
            dovecot_timeout: Seconds(Duration::from_secs(10)),
            max_failures: limits.max_failures,
            failure_window: Seconds(limits.window),
            max_failure_delay: Seconds(limits.max_delay),
            max_concurrent_checks: limits.max_concurrent_checks,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Spanned<String>,
    password_hash: Spanned<String>,
    /// Senders the user may use, in the envelope and in From: (addresses, `@domain`); see
    /// `auth.restrict_sender`.
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    address: Spanned<String>,
    kind: ListenerKind,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
    format: LogFormat,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for RawLog {
    fn default() -> RawLog {
        RawLog {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// A size: a number of octets, or a string with a unit (`"10M"`, `"512k"`, `"1G"`; powers of
/// 1024, as Postfix and most admins mean them).
#[derive(Debug, Clone, Copy)]
struct ByteSize(u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        number_or_text(d, parse_size).map(ByteSize)
    }
}

/// A plain number, or text with a unit read by `parse` (which also reads plain digits).
fn number_or_text<'de, D: serde::Deserializer<'de>, T>(
    d: D,
    parse: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(u64),
        Text(String),
    }
    let text = match Raw::deserialize(d)? {
        Raw::Number(n) => n.to_string(),
        Raw::Text(s) => s,
    };
    parse(&text).map_err(serde::de::Error::custom)
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 1048576, \"512k\", \"10M\" or \"1G\""))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit (use k, M or G)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A duration: seconds as a number, or a string with a unit (`"30s"`, `"5m"`, `"1h"`, `"2d"`).
#[derive(Debug, Clone, Copy)]
struct Seconds(Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Seconds, D::Error> {
        number_or_text(d, parse_duration).map(Seconds)
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("{s:?} is not a duration like 30, \"30s\", \"5m\", \"1h\" or \"2d\"")
    })?;
    let factor = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: unknown unit (use s, m, h or d)")),
    };
    Ok(Duration::from_secs(n.saturating_mul(factor)))
}

// --- Loading --------------------------------------------------------------------------------

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            key: None,
            message: e.to_string(),
        })?;
        Config::parse(&text, &file)
    }

    /// The embedded default.
    pub fn embedded() -> Result<Config, ConfigError> {
        Config::parse(DEFAULT, DEFAULT_NAME)
    }

    /// Checks config text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let at = |span: std::ops::Range<usize>, message: String| locate(text, file, span, message);
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().to_owned();
            match e.span() {
                Some(span) if span != (0..0) => at(span, message),
                _ => ConfigError {
                    file: file.to_owned(),
                    line: None,
                    key: None,
                    message,
                },
            }
        })?;

        let hostname = match raw.hostname {
            Some(h) => {
                let span = h.span();
                let h = h.into_inner();
                Domain::parse(&h).map_err(|e| at(span, format!("{h:?}: {e}")))?;
                h
            }
            None => system_hostname(),
        };

        let domains = |list: &[Spanned<String>]| -> Result<Vec<Domain>, ConfigError> {
            list.iter()
                .map(|d| {
                    Domain::parse(d.get_ref())
                        .map_err(|e| at(d.span(), format!("{:?}: {e}", d.get_ref())))
                })
                .collect()
        };
        let local_domains = domains(&raw.smtp.local_domains)?;
        let relay_domains = domains(&raw.smtp.relay_domains)?;
        let mut local_networks = Vec::new();
        for n in &raw.smtp.local_networks {
            let span = n.span();
            local_networks.push(n.get_ref().parse().map_err(|e| at(span, format!("{e}")))?);
        }
        let s = &raw.smtp;
        if s.max_recipients == 0 || s.max_line_length < 512 || s.max_errors == 0 {
            return Err(ConfigError {
                file: file.to_owned(),
                line: None,
                key: Some("smtp".into()),
                message: "max_recipients and max_errors must be at least 1, max_line_length at \
                          least 512 (RFC 5321 4.5.3.1)"
                    .into(),
            });
        }
        if raw.auth.max_failures == 0 || raw.auth.max_concurrent_checks == 0 {
            return Err(ConfigError {
                file: file.to_owned(),
                line: None,
                key: Some("auth".into()),
                message: "max_failures and max_concurrent_checks must be at least 1".into(),
            });
        }
        if s.max_hops == 0 || s.stress_timeout.0.is_zero() {
            return Err(ConfigError {
                file: file.to_owned(),
                line: None,
                key: Some("smtp".into()),
                message: "max_hops and stress_timeout must be more than 0".into(),
            });
        }
        if s.max_connections == 0 || s.max_connections_per_ip == 0 {
            return Err(ConfigError {
                file: file.to_owned(),
                line: None,
                key: Some("smtp".into()),
                message: "max_connections and max_connections_per_ip must be at least 1".into(),
            });
        }

        let tls = match (raw.tls.cert, raw.tls.key) {
            (Some(cert), Some(key)) => Tls::Files {
                cert: cert.into_inner(),
                key: key.into_inner(),
            },
            (None, None) => Tls::SelfSigned,
            (Some(only), None) => return Err(at(only.span(), "cert needs a key too".into())),
            (None, Some(only)) => return Err(at(only.span(), "key needs a cert too".into())),
        };

        let mut inline_users = String::new();
        for user in &raw.auth.user {
            let name = user.name.get_ref();
            if name.contains(':') || name.trim().is_empty() {
                return Err(at(user.name.span(), format!("{name:?} is not a user name")));
            }
            let mut senders = Vec::new();
            for sender in &user.addresses {
                let text = sender.get_ref();
                let valid = match text.strip_prefix('@') {
                    Some(domain) => Domain::parse(domain).map(|_| ()),
                    None => backstop_types::Address::parse(text).map(|_| ()),
                };
                valid.map_err(|e| at(sender.span(), format!("{text:?}: {e}")))?;
                senders.push(text.as_str());
            }
            let line = format!(
                "{name}:{}:{}\n",
                user.password_hash.get_ref(),
                senders.join(",")
            );
            // Checked here, so that a bad hash is reported at its line in this file.
            match backstop_listener::UserStore::parse(&line, Path::new(file)) {
                Ok(_) => inline_users.push_str(&line),
                Err(backstop_listener::users::UsersError::Line { message, .. }) => {
                    return Err(at(user.password_hash.span(), message));
                }
                Err(e) => return Err(at(user.password_hash.span(), e.to_string())),
            }
        }

        let listener_span = raw.listener.span();
        let raw_listeners = raw.listener.into_inner();
        if raw_listeners.is_empty() {
            return Err(at(
                listener_span,
                "at least one [[listener]] is needed".into(),
            ));
        }
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        for l in raw_listeners {
            let span = l.address.span();
            let address: SocketAddr = l.address.get_ref().parse().map_err(|_| {
                at(
                    span.clone(),
                    format!(
                        "{:?} is not an address like 127.0.0.1:25 or [::1]:25",
                        l.address.get_ref()
                    ),
                )
            })?;
            if listeners.iter().any(|o| o.name == l.name) {
                return Err(at(
                    span,
                    format!("a listener is already named {:?}", l.name),
                ));
            }
            if address.port() != 0 && listeners.iter().any(|o| o.address == address) {
                return Err(at(span, format!("another listener already uses {address}")));
            }
            listeners.push(ListenerConfig {
                name: l.name,
                address,
                kind: l.kind,
            });
        }
        let needs_users = listeners.iter().any(|l| l.kind != ListenerKind::Mx);
        if needs_users && raw.auth.users_file.is_none() && raw.auth.user.is_empty() {
            return Err(at(
                listener_span,
                "a submission listener needs users: set auth.users_file or add [[auth.user]]"
                    .into(),
            ));
        }

        let q = &raw.queue;
        if q.min_backoff.0.is_zero() || q.max_backoff.0 < q.min_backoff.0 || q.lifetime.0.is_zero()
        {
            return Err(ConfigError {
                file: file.to_owned(),
                line: None,
                key: Some("queue".into()),
                message: "min_backoff must be above zero and at most max_backoff, and lifetime \
                          above zero"
                    .into(),
            });
        }
        let queue = QueueConfig {
            retry: backstop_queue::RetryPolicy {
                min_backoff: q.min_backoff.0,
                max_backoff: q.max_backoff.0,
                lifetime: q.lifetime.0,
            },
            delay_warnings: q.delay_warnings.iter().map(|d| d.0).collect(),
            quarantine_retention: q.quarantine_retention.0,
        };
        let recipients = match &raw.recipients.table {
            None => None,
            Some(path) => Some(
                backstop_filter::recipients::TableFile::open(path.get_ref())
                    .map_err(|e| at(path.span(), e.to_string()))?,
            ),
        };
        let g = &raw.greylist;
        let greylist = g
            .enabled
            .then_some(backstop_filter::greylist::GreylistPolicy {
                delay: g.delay.0,
                retry_window: g.retry_window.0,
                auto_pass: g.auto_pass.0,
            });
        if greylist.is_some() && g.retry_window.0 <= g.delay.0 {
            return Err(ConfigError {
                file: file.to_owned(),
                line: None,
                key: Some("greylist".into()),
                message: "retry_window must be longer than delay".into(),
            });
        }
        let limit = |raw: &Option<Spanned<String>>| -> Result<Option<Limit>, ConfigError> {
            match raw {
                None => Ok(None),
                Some(text) => Limit::parse(text.get_ref())
                    .map(Some)
                    .map_err(|e| at(text.span(), e)),
            }
        };
        let r = &raw.rate_limits;
        let rate_limits = RateLimits {
            client_connections: limit(&r.client_connections)?,
            client_messages: limit(&r.client_messages)?,
            client_recipients: limit(&r.client_recipients)?,
            user_messages: limit(&r.user_messages)?,
            user_recipients: limit(&r.user_recipients)?,
        };
        let maildir = raw.data_dir.join(&raw.delivery.maildir);
        let mut routes = Vec::new();
        for route in &raw.route {
            routes.push(check_route(route, &at)?);
        }
        let mut dns = backstop_filter::dns::Settings::default();
        for n in &raw.dns.nameservers {
            dns.nameservers.push(n.get_ref().parse().map_err(|_| {
                at(
                    n.span(),
                    format!("{:?} is not an address like 127.0.0.1:53", n.get_ref()),
                )
            })?);
        }
        if let Some(timeout) = raw.dns.timeout {
            dns.timeout = timeout.0.max(Duration::from_secs(1));
        }
        if let Some(attempts) = raw.dns.attempts {
            dns.attempts = attempts.max(1);
        }
        let batv = check_batv(&raw.batv, &raw.data_dir, &at)?;
        let callahead_sender =
            match &raw.recipients.callahead_sender {
                Some(s) => backstop_types::Address::parse(s.get_ref())
                    .map_err(|e| at(s.span(), format!("{:?}: {e}", s.get_ref())))?,
                None => backstop_types::Address::parse(&format!("postmaster@{hostname}")).map_err(
                    |e| ConfigError {
                        file: file.to_owned(),
                        line: None,
                        key: Some("hostname".into()),
                        message: format!("postmaster@{hostname}: {e}"),
                    },
                )?,
            };
        let ldap = match &raw.ldap {
            None => None,
            Some(l) => Some(check_ldap(l, &at)?),
        };
        let auth_dovecot = match &raw.auth.dovecot {
            None => None,
            Some(_) if raw.auth.ldap.is_some() => {
                return Err(ConfigError {
                    file: file.to_owned(),
                    line: None,
                    key: Some("auth".into()),
                    message: "dovecot and [auth.ldap] both check logins: choose one".into(),
                })
            }
            Some(endpoint) => Some(backstop_filter::dovecot::DovecotAuth {
                endpoint: backstop_filter::net::Endpoint::parse(endpoint.get_ref())
                    .map_err(|e| at(endpoint.span(), e))?,
                timeout: raw.auth.dovecot_timeout.0,
            }),
        };
        let auth_ldap = match &raw.auth.ldap {
            None => None,
            Some(l) => Some(check_ldap(l, &at)?),
        };
        let metrics = match &raw.metrics.address {
            None => None,
            Some(a) => Some(a.get_ref().parse().map_err(|_| {
                at(
                    a.span(),
                    format!("{:?} is not an address like 127.0.0.1:9025", a.get_ref()),
                )
            })?),
        };
        let mut content_checks = Vec::new();
        for filter in &raw.filter {
            content_checks.push(check_filter(filter, &hostname, &at)?);
        }
        // Far below the 10 minutes a client waits for the reply to DATA (RFC 5321 4.5.3.2.6).
        let content_deadline = raw.content.deadline.map_or(Duration::from_secs(60), |d| {
            d.0.clamp(Duration::from_secs(1), Duration::from_secs(300))
        });
        let mut bounce_provenance_domains = Vec::new();
        for d in &raw.bounce_provenance.domains {
            bounce_provenance_domains.push(
                Domain::parse(d.get_ref())
                    .map_err(|e| at(d.span(), format!("{:?}: {e}", d.get_ref())))?,
            );
        }
        let mut dnsbl = Vec::new();
        for list in &raw.dnsbl {
            Domain::parse(list.zone.get_ref())
                .map_err(|e| at(list.zone.span(), format!("{:?}: {e}", list.zone.get_ref())))?;
            let mut codes = Vec::new();
            for code in &list.codes {
                codes.push(code.get_ref().parse().map_err(|_| {
                    at(
                        code.span(),
                        format!("{:?} is not an answer like 127.0.0.2", code.get_ref()),
                    )
                })?);
            }
            dnsbl.push(backstop_filter::dnsbl::List {
                zone: list.zone.get_ref().clone(),
                action: match list.action {
                    ListAction::Reject => backstop_filter::dnsbl::ListAction::Reject,
                    ListAction::Log => backstop_filter::dnsbl::ListAction::Log,
                },
                codes,
            });
        }
        let mut batv_exempt = Vec::new();
        for e in &raw.batv.exempt {
            let text = e.get_ref().to_ascii_lowercase();
            let valid = match text.strip_prefix('@') {
                Some(domain) => Domain::parse(domain).is_ok(),
                None => backstop_types::Address::parse(&text).is_ok(),
            };
            if !valid {
                return Err(at(
                    e.span(),
                    format!("{:?} is neither an address nor @domain", e.get_ref()),
                ));
            }
            batv_exempt.push(text);
        }
        let mut dkim = Vec::new();
        for key in &raw.dkim {
            let domain = Domain::parse(key.domain.get_ref()).map_err(|e| {
                at(
                    key.domain.span(),
                    format!("{:?}: {e}", key.domain.get_ref()),
                )
            })?;
            if dkim
                .iter()
                .any(|k: &backstop_delivery::dkim::DomainKey| k.domain == domain)
            {
                return Err(at(key.domain.span(), format!("{domain} has a key already")));
            }
            dkim.push(
                backstop_delivery::dkim::DomainKey::load(
                    domain,
                    &key.selector,
                    key.key_file.get_ref(),
                )
                .map_err(|e| at(key.key_file.span(), e))?,
            );
        }
        let admin = match (raw.admin.http, raw.admin.token_file) {
            (None, None) => AdminEndpoint::Unix(raw.data_dir.join(&raw.admin.socket)),
            (None, Some(t)) => return Err(at(t.span(), "token_file goes with http".into())),
            (Some(h), None) => {
                return Err(at(
                    h.span(),
                    "http needs a token_file (the bearer token)".into(),
                ));
            }
            (Some(h), Some(t)) => {
                let address: SocketAddr = h.get_ref().parse().map_err(|_| {
                    at(
                        h.span(),
                        format!("{:?} is not an address like 127.0.0.1:8025", h.get_ref()),
                    )
                })?;
                if !address.ip().is_loopback() {
                    return Err(at(
                        h.span(),
                        format!("{address}: the admin API listens on loopback only"),
                    ));
                }
                // The token is the admin API's only lock: a file others can read or change
                // gives it away.
                let mode = {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::metadata(t.get_ref())
                        .map_err(|e| at(t.span(), format!("{}: {e}", t.get_ref().display())))?
                        .permissions()
                        .mode()
                };
                if mode & 0o027 != 0 {
                    return Err(at(
                        t.span(),
                        format!(
                            "{}: mode {:o} lets others read or change the admin token; \
                             make it readable by its owner only (chmod 600)",
                            t.get_ref().display(),
                            mode & 0o777
                        ),
                    ));
                }
                let token = std::fs::read_to_string(t.get_ref())
                    .map_err(|e| at(t.span(), format!("{}: {e}", t.get_ref().display())))?
                    .trim()
                    .to_owned();
                if token.len() < 16 {
                    return Err(at(
                        t.span(),
                        format!(
                            "{}: the token must be at least 16 characters",
                            t.get_ref().display()
                        ),
                    ));
                }
                AdminEndpoint::Http { address, token }
            }
        };

        Ok(Config {
            hostname,
            data_dir: raw.data_dir,
            queue,
            recipients,
            greylist,
            rate_limits,
            rfc5322: raw.content.rfc5322,
            content_checks,
            content_deadline,
            maildir,
            delivery_paused: raw.delivery.paused,
            routes,
            delivery: DeliveryConfig {
                mx_port: raw.delivery.mx_port,
                connect_timeout: raw.delivery.connect_timeout.0,
                // Postfix's default_process_limit and default_destination_concurrency_limit.
                max_connections: at_least_one(&raw.delivery.max_connections, 100, &at)?,
                max_connections_per_destination: at_least_one(
                    &raw.delivery.max_connections_per_destination,
                    20,
                    &at,
                )?,
                // Postfix's initial_destination_concurrency.
                initial_window: at_least_one(&raw.delivery.initial_concurrency, 5, &at)?,
                dead_after: at_least_one(&raw.delivery.dead_after, 3, &at)?
                    .try_into()
                    .unwrap_or(u32::MAX),
                dead_backoff: raw.delivery.dead_backoff.0,
                max_in_flight: at_least_one(&raw.delivery.max_in_flight, 10_000, &at)?,
            },
            dns,
            batv_check_bounces: raw.batv.enabled && raw.batv.check_bounces,
            batv_exempt,
            ldap,
            callahead_sender,
            callahead_ttl: (
                raw.recipients.callahead_positive_ttl.0,
                raw.recipients.callahead_negative_ttl.0,
            ),
            bounce_provenance_domains,
            bounce_provenance: raw.bounce_provenance.enabled
                && !(raw.batv.enabled && raw.batv.check_bounces),
            batv,
            dnsbl,
            sender_checks: raw.sender_checks.enabled.then(|| {
                let c = &raw.sender_checks;
                backstop_filter::sender_auth::Actions {
                    dmarc_reject: c.dmarc_reject.into(),
                    dmarc_quarantine: c.dmarc_quarantine.into(),
                    spf_fail: c.spf_fail.into(),
                    tempfail_on_dns_error: c.dns_error == DnsErrorAction::Tempfail,
                    iprev_fail: c.iprev_fail.into(),
                    spf_at_mail: c.spf_at_mail,
                    trusted_arc_sealers: c.trusted_arc_sealers.clone(),
                }
            }),
            dkim: std::sync::Arc::new(backstop_delivery::dkim::Keys::new(dkim)),
            admin,
            metrics,
            smtp: Smtp {
                local_domains,
                relay_domains,
                local_networks,
                max_message_size: raw.smtp.max_message_size.0,
                max_recipients: raw.smtp.max_recipients,
                max_line_length: raw.smtp.max_line_length,
                max_errors: raw.smtp.max_errors,
                command_timeout: raw.smtp.command_timeout.0,
                data_timeout: raw.smtp.data_timeout.0,
                min_data_rate: raw.smtp.min_data_rate,
                max_hops: raw.smtp.max_hops,
                stress_timeout: raw.smtp.stress_timeout.0,
                greeting_delay: raw.smtp.greeting_delay.0,
                shutdown_grace: raw.smtp.shutdown_grace.0,
                max_connections: raw.smtp.max_connections,
                max_connections_per_ip: raw.smtp.max_connections_per_ip,
            },
            tls,
            auth: Auth {
                users_file: raw.auth.users_file.map(Spanned::into_inner),
                inline_users,
                allow_plaintext: raw.auth.allow_plaintext,
                restrict_sender: raw.auth.restrict_sender,
                ldap: auth_ldap,
                dovecot: auth_dovecot,
                limits: backstop_listener::auth_limits::AuthLimitConfig {
                    max_failures: raw.auth.max_failures,
                    window: raw.auth.failure_window.0,
                    max_delay: raw.auth.max_failure_delay.0,
                    max_concurrent_checks: raw.auth.max_concurrent_checks,
                    ..backstop_listener::auth_limits::AuthLimitConfig::default()
                },
            },
            listeners,
            log: Log {
                level: raw.log.level,
                json: raw.log.format == LogFormat::Json,
            },
        })
    }
}

type At<'a> = dyn Fn(std::ops::Range<usize>, String) -> ConfigError + 'a;

/// An `[ldap]` or `[auth.ldap]` section, checked.
fn check_ldap(l: &RawLdap, at: &At<'_>) -> Result<backstop_filter::ldap::LdapConfig, ConfigError> {
    let url = l.url.get_ref();
    if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
        return Err(at(
            l.url.span(),
            format!("{url:?} is not a URL like ldap://127.0.0.1:389"),
        ));
    }
    if !l.filter.get_ref().contains("%s") {
        return Err(at(
            l.filter.span(),
            "the filter needs %s where the address goes".into(),
        ));
    }
    let bind = match (&l.bind_dn, &l.bind_password_file) {
        (None, None) => None,
        (Some(dn), Some(file)) => {
            let password = std::fs::read_to_string(file.get_ref())
                .map_err(|e| at(file.span(), format!("{}: {e}", file.get_ref().display())))?;
            Some((
                dn.clone(),
                password.trim_end_matches(['\r', '\n']).to_owned(),
            ))
        }
        _ => {
            return Err(at(
                l.url.span(),
                "bind_dn and bind_password_file go together".into(),
            ));
        }
    };
    let tls = match &l.tls_ca_file {
        None => None,
        Some(file) => Some(
            backstop_smtp_client::tls::verifying_config(file.get_ref())
                .map_err(|e| at(file.span(), e))?,
        ),
    };
    Ok(backstop_filter::ldap::LdapConfig {
        url: url.clone(),
        starttls: l.starttls,
        tls,
        bind,
        base: l.base.clone(),
        filter: l.filter.get_ref().clone(),
        timeout: l.timeout.0,
        positive_ttl: l.positive_ttl.0,
        negative_ttl: l.negative_ttl.0,
        address_attribute: l.address_attribute.clone(),
    })
}

fn check_filter(
    raw: &RawFilter,
    hostname: &str,
    at: &At<'_>,
) -> Result<backstop_filter::pipeline::Check, ConfigError> {
    use backstop_filter::net::Endpoint;
    use backstop_filter::pipeline::{Check, OnError, Scanner};
    use backstop_filter::rules::{Action, Matcher, Rule};
    let kind = raw.kind.get_ref().as_str();
    let span = raw.kind.span();
    let pattern = || {
        let pattern = raw
            .pattern
            .as_ref()
            .ok_or_else(|| at(span.clone(), format!("a {kind} filter needs a pattern")))?;
        regex::Regex::new(pattern.get_ref())
            .map_err(|e| at(pattern.span(), format!("not a regular expression: {e}")))
    };
    let matcher = match kind {
        "header" => Some(Matcher::Header {
            name: raw.header.clone(),
            pattern: pattern()?,
        }),
        "body" => Some(Matcher::Body {
            pattern: pattern()?,
        }),
        "attachment" => {
            if raw.extensions.is_empty() && raw.mime_types.is_empty() {
                return Err(at(
                    span,
                    "an attachment filter needs extensions or mime_types".into(),
                ));
            }
            Some(Matcher::Attachment {
                extensions: raw
                    .extensions
                    .iter()
                    .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
                    .collect(),
                mime_types: raw
                    .mime_types
                    .iter()
                    .map(|m| m.to_ascii_lowercase())
                    .collect(),
            })
        }
        "mime_depth" => Some(Matcher::MimeDepth {
            max: raw
                .max
                .ok_or_else(|| at(span.clone(), "a mime_depth filter needs max".into()))?,
        }),
        "milter" | "rspamd" | "clamd" => None,
        other => {
            return Err(at(
                span,
                format!(
                    "{other:?} is not a filter type (header, body, attachment, mime_depth, milter, rspamd, clamd)"
                ),
            ));
        }
    };
    if let Some(matcher) = matcher {
        let action = raw
            .action
            .as_ref()
            .ok_or_else(|| at(span.clone(), format!("a {kind} filter needs an action")))?;
        let text = raw.message.clone();
        let action = match action.get_ref().as_str() {
            "reject" => Action::Reject(text.unwrap_or_else(|| "Message content rejected".into())),
            "tempfail" => Action::Tempfail(text.unwrap_or_else(|| "Try again later".into())),
            "quarantine" => Action::Quarantine,
            "discard" if raw.certain => Action::Discard,
            "discard" => {
                return Err(at(
                    action.span(),
                    "discard drops mail without telling anyone: say certain = true if this rule never catches wanted mail".into(),
                ));
            }
            other => {
                return Err(at(
                    action.span(),
                    format!("{other:?} is not an action (reject, tempfail, quarantine, discard)"),
                ));
            }
        };
        return Ok(Check {
            name: format!("{kind} rule"),
            scanner: Scanner::Rule(Rule { matcher, action }),
            // A rule needs nothing that can fail.
            on_error: OnError::Tempfail,
        });
    }
    let address = raw
        .address
        .as_ref()
        .ok_or_else(|| at(span.clone(), format!("a {kind} filter needs an address")))?;
    let endpoint = Endpoint::parse(address.get_ref()).map_err(|e| at(address.span(), e))?;
    let on_error = match raw
        .on_error
        .as_ref()
        .map(|o| (o.get_ref().as_str(), o.span()))
    {
        None | Some(("tempfail", _)) => OnError::Tempfail,
        Some(("accept", _)) => OnError::Accept,
        Some((other, span)) => {
            return Err(at(
                span,
                format!("{other:?} is not an on_error (tempfail, accept)"),
            ));
        }
    };
    let name = format!("{kind} {endpoint}");
    let scanner = match kind {
        "milter" => Scanner::Milter(backstop_filter::milter::Milter {
            endpoint,
            hostname: hostname.to_owned(),
        }),
        "rspamd" => Scanner::Rspamd(backstop_filter::rspamd::Rspamd { endpoint }),
        _ => Scanner::Clamd(backstop_filter::clamd::Clamd { endpoint }),
    };
    Ok(Check {
        name,
        scanner,
        on_error,
    })
}

fn check_route(route: &RawRoute, at: &At<'_>) -> Result<RouteConfig, ConfigError> {
    use backstop_smtp_client::{Endpoint, NextHop, TlsPolicy};
    let mut domains = Vec::new();
    let mut any_domain = false;
    for d in &route.domains {
        if d.get_ref() == "*" {
            any_domain = true;
        } else {
            domains.push(
                Domain::parse(d.get_ref())
                    .map_err(|e| at(d.span(), format!("{:?}: {e}", d.get_ref())))?,
            );
        }
    }
    let lmtp = route.protocol == Protocol::Lmtp;
    let mx = route.mx.as_ref().is_some_and(|m| *m.get_ref());
    let mx_span = route.mx.as_ref().map_or(0..0, Spanned::span);
    let relay = match (&route.relay, mx) {
        (Some(relay), false) => {
            let text = relay.get_ref();
            let endpoint = match text.strip_prefix("unix:") {
                Some(path) if path.starts_with('/') => Endpoint::Unix(PathBuf::from(path)),
                Some(_) => {
                    return Err(at(
                        relay.span(),
                        format!("{text:?}: a Unix socket needs an absolute path"),
                    ));
                }
                None => Endpoint::Tcp(text.parse().map_err(|_| {
                    at(
                        relay.span(),
                        format!("{text:?} is not an address like 192.0.2.25:25 or unix:/run/lmtp"),
                    )
                })?),
            };
            let host = route.host.clone().unwrap_or_else(|| match &endpoint {
                Endpoint::Tcp(a) => a.ip().to_string(),
                Endpoint::Unix(_) => "localhost".to_owned(),
            });
            Some(NextHop { endpoint, host })
        }
        (None, true) if lmtp => {
            return Err(at(
                mx_span,
                "LMTP goes to a fixed next hop (relay), not to MX hosts".into(),
            ));
        }
        (None, true) => None,
        (Some(relay), true) => {
            return Err(at(
                relay.span(),
                "a route has relay or mx = true, not both".into(),
            ));
        }
        (None, false) => {
            let span = route.domains.first().map_or(0..0, Spanned::span);
            return Err(at(
                span,
                "a route needs relay = \"host:port\" or mx = true".into(),
            ));
        }
    };
    let tls_setting = route.tls.as_ref().map_or(RouteTls::May, |t| *t.get_ref());
    let tls_span = route.tls.as_ref().map_or(0..0, Spanned::span);
    let tls = match tls_setting {
        RouteTls::None => TlsPolicy::Off,
        RouteTls::May => TlsPolicy::Opportunistic,
        RouteTls::Require => {
            let (file, span) = match &route.tls_ca_file {
                Some(f) => (f.get_ref().clone(), f.span()),
                None => (PathBuf::from(SYSTEM_CA_FILE), tls_span),
            };
            TlsPolicy::Require(
                backstop_smtp_client::tls::verifying_config(&file).map_err(|e| at(span, e))?,
            )
        }
    };
    if let (Some(f), false) = (&route.tls_ca_file, tls_setting == RouteTls::Require) {
        return Err(at(
            f.span(),
            "tls_ca_file goes with tls = \"require\"".into(),
        ));
    }
    let auth = match (&route.auth_user, &route.auth_password_file) {
        (None, None) => None,
        (Some(user), None) => {
            return Err(at(user.span(), "auth_user needs auth_password_file".into()));
        }
        (None, Some(file)) => {
            return Err(at(
                file.span(),
                "auth_password_file goes with auth_user".into(),
            ));
        }
        (Some(user), Some(file)) => {
            if relay.is_none() {
                return Err(at(
                    user.span(),
                    "AUTH is for a relay, not for MX hosts".into(),
                ));
            }
            if tls_setting == RouteTls::None {
                return Err(at(
                    user.span(),
                    "AUTH needs TLS: credentials are never sent in clear".into(),
                ));
            }
            let password = std::fs::read_to_string(file.get_ref())
                .map_err(|e| at(file.span(), format!("{}: {e}", file.get_ref().display())))?;
            Some(backstop_smtp_client::Credentials {
                user: user.get_ref().clone(),
                password: password.trim_end_matches(['\r', '\n']).to_owned(),
            })
        }
    };
    let span = route.domains.first().map_or(0..0, Spanned::span);
    if route.callahead && relay.is_none() {
        return Err(at(
            span,
            "callahead asks a fixed next hop (relay), not MX hosts".into(),
        ));
    }
    if route.callahead && route.proxy {
        return Err(at(
            span,
            "callahead and proxy both ask the relay at RCPT; proxy already passes its answer on: \
             choose one"
                .into(),
        ));
    }
    if route.proxy && (relay.is_none() || lmtp || any_domain) {
        return Err(at(
            span,
            "proxy passes named domains through to a fixed SMTP next hop (relay, not mx, not LMTP, not \"*\")".into(),
        ));
    }
    Ok(RouteConfig {
        domains,
        any_domain,
        relay,
        lmtp,
        tls,
        auth,
        callahead: route.callahead,
        proxy: route.proxy,
    })
}

/// A count that must be at least 1, or `default` when not given.
fn at_least_one(
    raw: &Option<Spanned<usize>>,
    default: usize,
    at: &At<'_>,
) -> Result<usize, ConfigError> {
    match raw {
        None => Ok(default),
        Some(n) if *n.get_ref() == 0 => Err(at(n.span(), "must be at least 1".into())),
        Some(n) => Ok(*n.get_ref()),
    }
}

fn check_batv(raw: &RawBatv, data_dir: &Path, at: &At<'_>) -> Result<Option<Batv>, ConfigError> {
    if !raw.enabled {
        return Ok(None);
    }
    let lifetime = *raw.lifetime_days.get_ref();
    if raw.key.is_empty() {
        if !(1..=365).contains(&lifetime) {
            return Err(at(
                raw.lifetime_days.span(),
                "the lifetime must be between 1 and 365 days".into(),
            ));
        }
        return Ok(Some(Batv::Generated {
            file: data_dir.join("batv").join("0.key"),
            lifetime_days: lifetime,
        }));
    }
    let mut secrets = Vec::new();
    for key in &raw.key {
        let secret = std::fs::read(key.secret_file.get_ref()).map_err(|e| {
            at(
                key.secret_file.span(),
                format!("{}: {e}", key.secret_file.get_ref().display()),
            )
        })?;
        secrets.push((key.number, trim_ascii(&secret).to_vec()));
    }
    backstop_batv::Keys::new(&secrets, *raw.sign_with.get_ref(), lifetime)
        .map(|k| Some(Batv::Keys(Box::new(k))))
        .map_err(|e| {
            let span = match e {
                backstop_batv::KeyError::BadLifetime => raw.lifetime_days.span(),
                backstop_batv::KeyError::NoSigningKey(_) => raw.sign_with.span(),
                _ => raw.key[0].secret_file.span(),
            };
            at(span, format!("batv: {e}"))
        })
}

/// A secret file's content without the line end an editor adds.
pub fn trim_ascii(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

/// An error at a place in the text: its line, and the key written there (with its table).
fn locate(text: &str, file: &str, span: std::ops::Range<usize>, message: String) -> ConfigError {
    let start = span.start.min(text.len());
    let line = text[..start].matches('\n').count() + 1;
    let line_text = text.lines().nth(line - 1).unwrap_or("");
    let table = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let header = line_text.trim();
    let key = match line_text.split_once('=') {
        _ if header.starts_with('[') => Some(
            header
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_owned(),
        ),
        Some((k, _)) => {
            let k = k.trim().trim_matches('"');
            Some(match &table {
                Some(t) => format!("{t}.{k}"),
                None => k.to_owned(),
            })
        }
        _ => table,
    };
    ConfigError {
        file: file.to_owned(),
        line: Some(line),
        key,
        message,
    }
}

fn system_hostname() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    if Domain::parse(&name).is_ok() {
        name
    } else {
        "localhost".to_owned()
    }
}

#[cfg(test)]
mod tests;
