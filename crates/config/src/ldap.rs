//! `[ldap]` (recipients) and `[auth.ldap]` (logins): a directory.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Ctx, Located};
use crate::units::{secs, Seconds};

/// A directory as the config describes it; the password file and CA file are read by the
/// loading step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ldap {
    pub url: String,
    pub starttls: bool,
    /// Trust anchors for TLS, PEM; the system's when absent.
    pub tls_ca_file: Option<Located<PathBuf>>,
    /// Search as this entry; anonymous when absent.
    pub bind: Option<LdapBind>,
    pub base: String,
    /// With `%s` where the address (or login) goes.
    pub filter: String,
    pub timeout: Duration,
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    /// For logins: the attribute listing a user's addresses.
    pub address_attribute: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LdapBind {
    pub dn: String,
    pub password_file: Located<PathBuf>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLdap {
    url: Spanned<String>,
    base: String,
    #[serde(default = "mail_filter")]
    filter: Spanned<String>,
    bind_dn: Option<Spanned<String>>,
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
    secs(10)
}

fn ten_minutes() -> Seconds {
    secs(600)
}

fn one_minute() -> Seconds {
    secs(60)
}

/// `section` names it in messages (`ldap` or `auth.ldap`).
pub(crate) fn check(ctx: &mut Ctx<'_>, l: RawLdap, section: &str) -> Ldap {
    let url = l.url.get_ref();
    if !(url.starts_with("ldap://") || url.starts_with("ldaps://")) {
        ctx.error(
            l.url.span(),
            "",
            format!("{url:?} is not a URL like ldap://127.0.0.1:389"),
        );
    }
    if !l.filter.get_ref().contains("%s") {
        ctx.error(
            l.filter.span(),
            &format!("{section}.filter"),
            "the filter needs %s where the address goes",
        );
    }
    let bind = match (&l.bind_dn, &l.bind_password_file) {
        (None, None) => None,
        (Some(dn), Some(file)) => Some(LdapBind {
            dn: dn.get_ref().clone(),
            password_file: crate::path(ctx, file),
        }),
        (Some(dn), None) => {
            ctx.error(dn.span(), "", "bind_dn needs bind_password_file");
            None
        }
        (None, Some(file)) => {
            ctx.error(file.span(), "", "bind_password_file goes with bind_dn");
            None
        }
    };
    Ldap {
        url: url.clone(),
        starttls: l.starttls,
        tls_ca_file: l.tls_ca_file.as_ref().map(|f| crate::path(ctx, f)),
        bind,
        base: l.base,
        filter: l.filter.into_inner(),
        timeout: l.timeout.0,
        positive_ttl: l.positive_ttl.0,
        negative_ttl: l.negative_ttl.0,
        address_attribute: l.address_attribute,
    }
}
