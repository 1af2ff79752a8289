//! backstop's configuration file: TOML, read and checked section by section into [`Config`].
//!
//! Reading is pure: [`parse`] reads no file and touches no network, so it can be fuzzed and
//! tested on text alone. The files a config names (tables, keys, tokens, CA files, users) are
//! kept as [`Located`] paths, with the place they were named, for the binary's loading step to
//! read and report on at the same file, line and key.
//!
//! One run reports every problem ([`Errors`]): all syntax errors; each key serde refuses (the
//! section is read again without it); each value the checks refuse. Messages are plain words,
//! never Rust type names. Things that work but are likely mistakes are [`Config::warnings`].
//!
//! The embedded default ([`DEFAULT`]) is `etc/backstop.toml`, so the file admins read is the one
//! the binary runs on when started without `--config`.

mod admin;
mod auth;
mod batv;
mod content;
mod delivery;
mod dkim;
mod dns;
mod document;
mod error;
mod ldap;
mod limits;
mod listener;
mod log;
mod quarantine;
mod queue;
mod recipients;
mod route;
mod sender_checks;
pub mod show;
mod smtp;
mod state;
mod tls;
mod units;

use std::ops::Range;
use std::path::PathBuf;

use backstop_types::Domain;
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use admin::AdminEndpoint;
pub use auth::Auth;
pub use batv::{Batv, BatvKeys};
pub use content::ContentAction;
pub use delivery::DeliveryConfig;
pub use dkim::DkimKey;
pub use error::{ConfigError, Errors, Located, Location};
pub use ldap::{Ldap, LdapBind};
pub use limits::RateLimits;
pub use listener::{ListenerConfig, ListenerKind};
pub use log::Log;
pub use quarantine::Quarantine;
pub use queue::{QueueConfig, Retry};
pub use recipients::{Callahead, CallaheadTtl};
pub use route::{RouteAuth, RouteConfig, RouteTls};
pub use smtp::Smtp;
pub use tls::Tls;
pub use units::{parse_duration, parse_size};

use error::Ctx;

/// The embedded default configuration.
pub const DEFAULT: &str = include_str!("../../../etc/backstop.toml");
/// How the embedded default is named in messages.
pub const DEFAULT_NAME: &str = "<embedded default config>";

/// The checked configuration: what the file says, with every default filled in. Files it names
/// are paths, not yet read.
#[derive(Debug)]
pub struct Config {
    pub hostname: String,
    pub data_dir: PathBuf,
    pub smtp: Smtp,
    pub tls: Tls,
    pub auth: Auth,
    pub listeners: Vec<ListenerConfig>,
    pub queue: QueueConfig,
    /// Retention per kind, digests, release pages and their keys.
    pub quarantine: Quarantine,
    /// The recipient table; `None`: every local part of a local domain is accepted.
    pub recipients: Option<Located<PathBuf>>,
    /// Greylisting of unauthenticated clients, when enabled.
    pub greylist: Option<backstop_filter::greylist::GreylistPolicy>,
    pub rate_limits: RateLimits,
    /// What to do with messages that are not well-formed RFC 5322.
    pub rfc5322: ContentAction,
    /// The content checks (`[[filter]]`), in order, and the deadline of a whole run.
    pub content_checks: Vec<backstop_filter::pipeline::Check>,
    pub content_deadline: std::time::Duration,
    /// `[content] max_scan_size`: the largest message the checks that need it whole (DKIM,
    /// DMARC, `[[filter]]`) read into memory; `None`: every message.
    pub max_scan_size: Option<u64>,
    pub delivery: DeliveryConfig,
    /// Routes, first match wins.
    pub routes: Vec<RouteConfig>,
    /// The resolver's nameservers, timeout and attempts.
    pub dns: backstop_filter::dns::Settings,
    /// BATV tags on the return path of our users' mail; `None` when turned off.
    pub batv: Option<Batv>,
    /// An LDAP directory of recipients for the local domains, when configured.
    pub ldap: Option<Ldap>,
    /// How callahead asks and how long answers are remembered.
    pub callahead: Callahead,
    /// Refuse bounces that return a message we never sent (when BATV does not check bounces).
    pub bounce_provenance: bool,
    /// The domains it applies to; empty: every local domain.
    pub bounce_provenance_domains: Vec<Domain>,
    /// How long the Message-ID of a message sent is remembered for bounce provenance.
    pub sent_id_retention: std::time::Duration,
    /// The site's Redis for the shared state; `None`: the state is this node's.
    pub state: Option<backstop_state::redis::Settings>,
    /// DNS blocklists asked about untrusted clients at MAIL FROM.
    pub dnsbl: Vec<backstop_filter::dnsbl::List>,
    /// SPF, DKIM and DMARC of untrusted clients' mail; `None` when off.
    pub sender_checks: Option<backstop_filter::sender_auth::Actions>,
    /// DKIM keys for our users' mail, by From domain.
    pub dkim: Vec<DkimKey>,
    pub admin: AdminEndpoint,
    /// The Unix socket local programs submit through with `backstop sendmail`, as the Unix
    /// user they run as; `None` when `[sendmail] enabled = false`.
    pub sendmail: Option<PathBuf>,
    /// The Unix users whose `backstop sendmail` may use any sender (`-f`); the others only
    /// their own address, when `[auth] restrict_sender` is on.
    pub sendmail_trusted_users: Vec<String>,
    /// Where `GET /metrics` is answered; `None`: only `backstop metrics`.
    pub metrics: Option<std::net::SocketAddr>,
    pub log: Log,
    /// Every section as read, defaults filled in, for `backstop config show`.
    pub shown: show::Shown,
    /// What works but is likely not what was meant (an unqualified host name, say).
    pub warnings: Vec<ConfigError>,
}

impl Config {
    /// The config as TOML, every key with its value or its default (`backstop config show`).
    pub fn show(&self) -> String {
        let top = [
            ("hostname", toml::Value::String(self.hostname.clone())),
            (
                "data_dir",
                toml::Value::String(self.data_dir.display().to_string()),
            ),
        ];
        self.shown.render(&top)
    }

    /// Some route delivers by MX (it has no relay), so delivery needs DNS.
    pub fn has_mx_route(&self) -> bool {
        self.routes.iter().any(|r| r.relay.is_none())
    }
}

/// Checks config text; `file` names it in messages. Every problem is in the `Err`.
pub fn parse(text: &str, file: &str) -> Result<Config, Errors> {
    match parse_all(text, file) {
        (Some(config), errors) if errors.is_empty() => Ok(config),
        (_, errors) => Err(Errors::new(errors)),
    }
}

/// Every key's default, as TOML (`backstop config show --defaults`): the config of an empty
/// file, whose host name is this machine's.
pub fn defaults() -> String {
    match parse_all("", "(defaults)") {
        (Some(config), _) => config.show(),
        (None, _) => String::new(),
    }
}

/// The embedded default.
pub fn embedded() -> Result<Config, Errors> {
    parse(DEFAULT, DEFAULT_NAME)
}

/// Checks config text and keeps going past problems: the config as far as it could be read
/// (a default where a value was wrong), and every problem. `None` only when the text is not
/// TOML at all; a caller may still check the files a config with problems names, to report
/// everything in one run.
pub fn parse_all(text: &str, file: &str) -> (Option<Config>, Vec<ConfigError>) {
    let mut ctx = Ctx::new(text, file);
    let config = read(&mut ctx, text);
    let Ctx {
        errors, warnings, ..
    } = ctx;
    (
        config.map(|mut c| {
            c.warnings = warnings;
            c
        }),
        errors,
    )
}

/// The top-level keys besides the sections.
#[derive(Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTop {
    /// Our name in greetings and `Received:`; the machine's host name when absent.
    hostname: Option<Spanned<String>>,
    /// Where the queue and generated files live; relative to the working directory.
    data_dir: Option<PathBuf>,
}

/// Every key a config may have at the top level.
const TOP_LEVEL: &[&str] = &[
    "hostname",
    "data_dir",
    "smtp",
    "tls",
    "auth",
    "listener",
    "queue",
    "quarantine",
    "recipients",
    "ldap",
    "greylist",
    "rate_limits",
    "delivery",
    "content",
    "filter",
    "route",
    "dns",
    "batv",
    "dkim",
    "sender_checks",
    "dnsbl",
    "bounce_provenance",
    "state",
    "admin",
    "sendmail",
    "metrics",
    "log",
];

/// The sections as the document has them, not yet read.
struct Sections<'t> {
    smtp: Option<Value<'t>>,
    tls: Option<Value<'t>>,
    listener: Option<Value<'t>>,
    auth: Option<Value<'t>>,
    queue: Option<Value<'t>>,
    quarantine: Option<Value<'t>>,
    recipients: Option<Value<'t>>,
    ldap: Option<Value<'t>>,
    greylist: Option<Value<'t>>,
    rate_limits: Option<Value<'t>>,
    delivery: Option<Value<'t>>,
    content: Option<Value<'t>>,
    filter: Option<Value<'t>>,
    route: Option<Value<'t>>,
    dns: Option<Value<'t>>,
    dnsbl: Option<Value<'t>>,
    batv: Option<Value<'t>>,
    dkim: Option<Value<'t>>,
    sender_checks: Option<Value<'t>>,
    bounce_provenance: Option<Value<'t>>,
    state: Option<Value<'t>>,
    admin: Option<Value<'t>>,
    sendmail: Option<Value<'t>>,
    metrics: Option<Value<'t>>,
    log: Option<Value<'t>>,
}

type Value<'t> = Spanned<toml::de::DeValue<'t>>;

fn read(ctx: &mut Ctx<'_>, text: &str) -> Option<Config> {
    use document::read;
    let mut root = document::open(ctx, text)?.into_inner();
    let unknown: Vec<(String, Range<usize>)> = root
        .iter()
        .filter(|(k, _)| !TOP_LEVEL.contains(&k.get_ref().as_ref()))
        .map(|(k, _)| (k.get_ref().to_string(), k.span()))
        .collect();
    for (key, span) in unknown {
        ctx.error(
            span,
            &key,
            format!(
                "unknown key or section {key}; the known ones are: {}",
                TOP_LEVEL.join(", ")
            ),
        );
        root.remove(key.as_str());
    }
    // The order of the file's sections does not matter; each is read on its own.
    let listener_span = root.get("listener").map(|l| l.span());
    let mut top_table = toml::de::DeTable::new();
    for key in ["hostname", "data_dir"] {
        if let Some((k, v)) = root.remove_entry(key) {
            top_table.insert(k, v);
        }
    }
    let top: RawTop = read(
        ctx,
        Spanned::new(0..text.len(), toml::de::DeValue::Table(top_table)),
    )
    .unwrap_or_default();
    let hostname = smtp::hostname(ctx, top.hostname);
    let data_dir = top.data_dir.unwrap_or_else(|| PathBuf::from("var"));

    // Every section read first (each problem reported), then checked.
    let mut section = |key: &str| root.remove(key);
    let raw = Sections {
        smtp: section("smtp"),
        tls: section("tls"),
        listener: section("listener"),
        auth: section("auth"),
        queue: section("queue"),
        quarantine: section("quarantine"),
        recipients: section("recipients"),
        ldap: section("ldap"),
        greylist: section("greylist"),
        rate_limits: section("rate_limits"),
        delivery: section("delivery"),
        content: section("content"),
        filter: section("filter"),
        route: section("route"),
        dns: section("dns"),
        dnsbl: section("dnsbl"),
        batv: section("batv"),
        dkim: section("dkim"),
        sender_checks: section("sender_checks"),
        bounce_provenance: section("bounce_provenance"),
        state: section("state"),
        admin: section("admin"),
        sendmail: section("sendmail"),
        metrics: section("metrics"),
        log: section("log"),
    };
    let mut shown = show::Shown::default();
    // Each section read (or its defaults), and kept for `config show` as it was read.
    macro_rules! read {
        ($name:literal, $value:expr) => {{
            let raw = $value.and_then(|v| read(ctx, v)).unwrap_or_default();
            shown.add($name, &raw);
            raw
        }};
    }
    let smtp = read!("smtp", raw.smtp);
    let smtp = smtp::check(ctx, smtp);
    let tls = read!("tls", raw.tls);
    let tls = tls::check(ctx, tls);
    let listeners = raw.listener.and_then(|v| read(ctx, v));
    shown.add("listener", &listeners);
    let listeners = listener::check(ctx, listeners, listener_span.clone());
    let auth = read!("auth", raw.auth);
    let auth = auth::check(ctx, auth, &listeners, listener_span);
    let queue = read!("queue", raw.queue);
    let queue = queue::check(ctx, queue);
    let quarantine = read!("quarantine", raw.quarantine);
    let quarantine = quarantine::check(ctx, quarantine, queue.quarantine_retention, &data_dir);
    let recipients = read!("recipients", raw.recipients);
    let (recipients, callahead) = recipients::check(ctx, recipients, &hostname);
    let ldap = raw.ldap.and_then(|v| read(ctx, v));
    shown.add("ldap", &ldap);
    let ldap = ldap.map(|raw| ldap::check(ctx, raw, "ldap"));
    let greylist = read!("greylist", raw.greylist);
    let greylist = limits::greylist(ctx, greylist);
    let rate_limits = read!("rate_limits", raw.rate_limits);
    let rate_limits = limits::rate_limits(ctx, rate_limits);
    let delivery = read!("delivery", raw.delivery);
    let delivery = delivery::check(ctx, delivery, &data_dir);
    let content::ContentSettings {
        rfc5322,
        deadline: content_deadline,
        max_scan_size,
    } = content::content(read!("content", raw.content));
    let filters = read!("filter", raw.filter);
    let content_checks = content::filters(ctx, filters, &hostname);
    let routes = read!("route", raw.route);
    let routes = route::check(ctx, routes, &smtp);
    let dns = read!("dns", raw.dns);
    let dns = dns::settings(ctx, dns);
    let dnsbl = read!("dnsbl", raw.dnsbl);
    let dnsbl = dns::blocklists(ctx, dnsbl);
    let batv = read!("batv", raw.batv);
    let batv = batv::check(ctx, batv, &data_dir);
    let dkim = read!("dkim", raw.dkim);
    let dkim = dkim::check(ctx, dkim);
    let sender_checks = sender_checks::check(read!("sender_checks", raw.sender_checks));
    let bounce_provenance = read!("bounce_provenance", raw.bounce_provenance);
    let provenance = sender_checks::bounce_provenance(
        ctx,
        bounce_provenance,
        batv.as_ref().is_some_and(|b| b.check_bounces),
    );
    let state = read!("state", raw.state);
    let state = state::check(ctx, state, provenance.retention);
    let admin = read!("admin", raw.admin);
    let admin = admin::admin(ctx, admin, &data_dir);
    let (sendmail, sendmail_trusted_users) =
        admin::sendmail(read!("sendmail", raw.sendmail), &data_dir);
    let metrics = read!("metrics", raw.metrics);
    let metrics = admin::metrics(ctx, metrics);
    let log = read!("log", raw.log);
    let log = log::check(ctx, log);

    Some(Config {
        hostname,
        data_dir,
        smtp,
        tls,
        auth,
        listeners,
        queue,
        quarantine,
        recipients,
        greylist,
        rate_limits,
        rfc5322,
        content_checks,
        content_deadline,
        max_scan_size,
        delivery,
        routes,
        dns,
        batv,
        ldap,
        callahead,
        bounce_provenance: provenance.enabled,
        bounce_provenance_domains: provenance.domains,
        sent_id_retention: provenance.retention,
        state,
        dnsbl,
        sender_checks,
        dkim,
        admin,
        sendmail,
        sendmail_trusted_users,
        metrics,
        log,
        shown,
        warnings: Vec::new(),
    })
}

/// Domain names, each checked; a wrong one is reported and left out.
pub(crate) fn domains(ctx: &mut Ctx<'_>, list: &[Spanned<String>]) -> Vec<Domain> {
    list.iter()
        .filter_map(|d| match Domain::parse(d.get_ref()) {
            Ok(domain) => Some(domain),
            Err(e) => {
                ctx.error(d.span(), "", format!("{:?}: {e}", d.get_ref()));
                None
            }
        })
        .collect()
}

/// A count that must be at least 1 (reported and `default` otherwise), or `default` when
/// not given.
pub(crate) fn at_least_one(
    ctx: &mut Ctx<'_>,
    raw: &Option<Spanned<usize>>,
    default: usize,
) -> usize {
    match raw {
        None => default,
        Some(n) if *n.get_ref() == 0 => {
            ctx.error(n.span(), "", "must be at least 1");
            default
        }
        Some(n) => *n.get_ref(),
    }
}

/// A socket address like `127.0.0.1:25`; `example` shows the form in the message.
pub(crate) fn socket_address(
    ctx: &mut Ctx<'_>,
    text: &Spanned<String>,
    example: &str,
) -> Option<std::net::SocketAddr> {
    match text.get_ref().parse() {
        Ok(address) => Some(address),
        Err(_) => {
            ctx.error(
                text.span(),
                "",
                format!("{:?} is not an address like {example}", text.get_ref()),
            );
            None
        }
    }
}

/// A path named in the config, with its place.
pub(crate) fn path(ctx: &Ctx<'_>, raw: &Spanned<PathBuf>) -> Located<PathBuf> {
    ctx.located(raw.get_ref().clone(), raw.span(), "")
}

#[cfg(test)]
mod tests;
