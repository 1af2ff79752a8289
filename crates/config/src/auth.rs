//! `[auth]`: who may log in, how passwords are checked, and the limits on guessing.

use std::ops::Range;
use std::path::{Path, PathBuf};

use backstop_listener::auth_limits::AuthLimitConfig;
use backstop_types::Domain;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Ctx, Located};
use crate::ldap::{Ldap, RawLdap};
use crate::listener::{ListenerConfig, ListenerKind};
use crate::units::{secs, Seconds};

#[derive(Debug)]
pub struct Auth {
    /// `name:hash` lines; see `backstop_listener::users`.
    pub users_file: Option<Located<PathBuf>>,
    /// Users given in the config itself, as `name:hash:addresses` lines (each checked).
    pub inline_users: String,
    /// Offer AUTH without TLS. Off unless explicitly configured.
    pub allow_plaintext: bool,
    /// Hold authenticated users to the envelope senders they own.
    pub restrict_sender: bool,
    /// Logins the users file does not know: a search for the entry, then a bind as it.
    pub ldap: Option<Ldap>,
    /// Or: logins the users file does not know, checked by Dovecot (its auth-client socket).
    pub dovecot: Option<backstop_filter::dovecot::DovecotAuth>,
    /// Failed logins allowed per client and per name, the delays, the checks at once.
    pub limits: AuthLimitConfig,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAuth {
    users_file: Option<Spanned<PathBuf>>,
    user: Vec<RawUser>,
    allow_plaintext: bool,
    restrict_sender: bool,
    /// Logins the users file does not know, checked against a directory.
    ldap: Option<RawLdap>,
    /// ...or by Dovecot, at its auth-client socket.
    dovecot: Option<Spanned<String>>,
    dovecot_timeout: Seconds,
    max_failures: Spanned<u32>,
    failure_window: Seconds,
    max_failure_delay: Seconds,
    max_concurrent_checks: Spanned<usize>,
}

impl Default for RawAuth {
    /// Also what a config without an `[auth]` section gets: senders restricted, the limits
    /// on password guessing on.
    fn default() -> RawAuth {
        let limits = AuthLimitConfig::default();
        RawAuth {
            users_file: None,
            user: Vec::new(),
            allow_plaintext: false,
            restrict_sender: true,
            ldap: None,
            dovecot: None,
            dovecot_timeout: secs(10),
            max_failures: Spanned::new(0..0, limits.max_failures),
            failure_window: Seconds(limits.window),
            max_failure_delay: Seconds(limits.max_delay),
            max_concurrent_checks: Spanned::new(0..0, limits.max_concurrent_checks),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: Spanned<String>,
    password_hash: Spanned<String>,
    /// Senders the user may use, in the envelope and in From: (addresses, `@domain`); see
    /// `auth.restrict_sender`.
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
}

/// `listener_span`: where the listeners are, for "a submission listener needs users".
pub(crate) fn check(
    ctx: &mut Ctx<'_>,
    raw: RawAuth,
    listeners: &[ListenerConfig],
    listener_span: Option<Range<usize>>,
) -> Auth {
    let inline_users = inline_users(ctx, &raw.user);
    let needs_users = listeners.iter().any(|l| l.kind != ListenerKind::Mx);
    // Users come from the users file, [[auth.user]], or whoever checks logins for us.
    let has_users = raw.users_file.is_some()
        || !raw.user.is_empty()
        || raw.dovecot.is_some()
        || raw.ldap.is_some();
    if needs_users && !has_users {
        ctx.error(
            listener_span.unwrap_or(0..0),
            "listener",
            "a submission listener needs users: set auth.users_file, add [[auth.user]], or check logins with auth.dovecot or [auth.ldap]",
        );
    }
    let defaults = AuthLimitConfig::default();
    if *raw.max_failures.get_ref() == 0 {
        ctx.error(
            raw.max_failures.span(),
            "auth.max_failures",
            "must be at least 1",
        );
    }
    if *raw.max_concurrent_checks.get_ref() == 0 {
        ctx.error(
            raw.max_concurrent_checks.span(),
            "auth.max_concurrent_checks",
            "must be at least 1",
        );
    }
    let dovecot = match (&raw.dovecot, &raw.ldap) {
        (None, _) => None,
        (Some(endpoint), Some(_)) => {
            ctx.error(
                endpoint.span(),
                "",
                "dovecot and [auth.ldap] both check logins: choose one",
            );
            None
        }
        (Some(endpoint), None) => match backstop_filter::net::Endpoint::parse(endpoint.get_ref()) {
            Ok(endpoint) => Some(backstop_filter::dovecot::DovecotAuth {
                endpoint,
                timeout: raw.dovecot_timeout.0,
            }),
            Err(e) => {
                ctx.error(endpoint.span(), "", e);
                None
            }
        },
    };
    Auth {
        users_file: raw.users_file.as_ref().map(|f| crate::path(ctx, f)),
        inline_users,
        allow_plaintext: raw.allow_plaintext,
        restrict_sender: raw.restrict_sender,
        ldap: raw.ldap.map(|l| crate::ldap::check(ctx, l, "auth.ldap")),
        dovecot,
        limits: AuthLimitConfig {
            max_failures: match *raw.max_failures.get_ref() {
                0 => defaults.max_failures,
                n => n,
            },
            window: raw.failure_window.0,
            max_delay: raw.max_failure_delay.0,
            max_concurrent_checks: match *raw.max_concurrent_checks.get_ref() {
                0 => defaults.max_concurrent_checks,
                n => n,
            },
            ..defaults
        },
    }
}

/// `[[auth.user]]` as users-file lines, each checked here so that a bad hash is reported at its
/// line in this file.
fn inline_users(ctx: &mut Ctx<'_>, users: &[RawUser]) -> String {
    let mut lines = String::new();
    for user in users {
        let name = user.name.get_ref();
        if name.contains(':') || name.trim().is_empty() || backstop_types::text::has_control(name) {
            ctx.error(user.name.span(), "", format!("{name:?} is not a user name"));
            continue;
        }
        let mut senders = Vec::new();
        for sender in &user.addresses {
            let text = sender.get_ref();
            let valid = match text.strip_prefix('@') {
                Some(domain) => Domain::parse(domain).map(|_| ()),
                None => backstop_types::Address::parse(text).map(|_| ()),
            };
            match valid {
                Ok(()) => senders.push(text.as_str()),
                Err(e) => ctx.error(sender.span(), "", format!("{text:?}: {e}")),
            }
        }
        let line = format!(
            "{name}:{}:{}\n",
            user.password_hash.get_ref(),
            senders.join(",")
        );
        match backstop_listener::UserStore::parse(&line, Path::new("config")) {
            Ok(_) => lines.push_str(&line),
            Err(backstop_listener::users::UsersError::Line { message, .. }) => {
                ctx.error(user.password_hash.span(), "", message);
            }
            Err(e) => ctx.error(user.password_hash.span(), "", e.to_string()),
        }
    }
    lines
}
