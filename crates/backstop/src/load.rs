//! The loading step: the config's text checked by `backstop_config` (pure), then every file it
//! names read and checked — the recipient table, the users, the certificate, the LDAP and
//! smarthost passwords, CA files, DKIM and BATV keys, the admin token — each problem at the
//! file, line and key that names the file. One run reports every problem of both steps.

use backstop_types::Clock as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backstop_config::{
    AdminEndpoint, BatvKeys, Config, ConfigError, Errors, Ldap, Located, RouteConfig, RouteTls, Tls,
};
use backstop_filter::ldap::LdapConfig;
use backstop_filter::recipients::TableFile;
use backstop_listener::users::SenderPolicy;
use backstop_listener::UserStore;
use backstop_smtp_client::{Credentials, TlsPolicy};

/// A config with what its files hold: everything the server is built from.
pub struct Setup {
    pub config: Config,
    /// The recipient table; `None`: every local part of a local domain is accepted.
    pub recipients: Option<TableFile>,
    /// The users file and `[[auth.user]]`, held to their senders when the config says so.
    pub users: Arc<UserStore>,
    /// The recipients' directory and the logins' directory, with their passwords and CAs.
    pub ldap: Option<LdapConfig>,
    pub auth_ldap: Option<LdapConfig>,
    /// The routes, in order, with their TLS trust anchors and smarthost credentials.
    pub routes: Vec<Route>,
    pub dkim: Arc<backstop_delivery::dkim::Keys>,
    /// BATV keys; `None` when BATV is off.
    pub batv: Option<BatvSource>,
    /// The keys that sign quarantine release links, when the config names them (`None`: the
    /// generated one, made on first use by the server).
    pub quarantine_keys: Option<backstop_web::token::TokenKeys>,
    pub admin: Admin,
}

/// A route and what its files hold.
pub struct Route {
    pub config: RouteConfig,
    pub tls: TlsPolicy,
    pub auth: Option<Credentials>,
}

/// Where the BATV keys come from.
#[derive(Debug, Clone)]
pub enum BatvSource {
    /// Keys from the files the config names.
    Keys(Box<backstop_batv::Keys>),
    /// None named: key 0 from this file, made with a random secret on first use.
    Generated { file: PathBuf, lifetime_days: u16 },
}

/// Where the admin API listens, with its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    /// A Unix socket only its owner may use.
    Unix(PathBuf),
    /// HTTP on a loopback address; every request must carry `Authorization: Bearer <token>`.
    /// The Unix socket `socket` is served too.
    Http {
        address: std::net::SocketAddr,
        token: String,
        socket: PathBuf,
    },
}

/// The config at `path` (the embedded default when `None`) and its files.
pub fn load(path: Option<&Path>) -> Result<Setup, Errors> {
    let (text, name) = match path {
        None => (
            backstop_config::DEFAULT.to_owned(),
            backstop_config::DEFAULT_NAME.to_owned(),
        ),
        Some(path) => {
            let name = path.display().to_string();
            match std::fs::read_to_string(path) {
                Ok(text) => (text, name),
                Err(e) => return Err(Errors::new(vec![ConfigError::file(&name, e.to_string())])),
            }
        }
    };
    let (config, mut errors) = backstop_config::parse_all(&text, &name);
    let Some(config) = config else {
        return Err(Errors::new(errors));
    };
    // The files are read even when the text has problems, so one run reports them all.
    let setup = read_files(config, &mut errors);
    match errors.is_empty() {
        true => Ok(setup),
        false => Err(Errors::new(errors)),
    }
}

/// Reads what `config` names; each problem is added to `errors` and a stand-in is used, so
/// that every file is looked at.
fn read_files(config: Config, errors: &mut Vec<ConfigError>) -> Setup {
    let mut report = |e: ConfigError| errors.push(e);
    let recipients = config.recipients.as_ref().and_then(|table| {
        TableFile::open(&table.value)
            .map_err(|e| report(table.error(e.to_string())))
            .ok()
    });
    let users = Arc::new(users(&config, &mut report));
    if let Tls::Files { cert, key } = &config.tls {
        let source = backstop_listener::tls::CertSource::Files {
            cert: cert.value.clone(),
            key: key.value.clone(),
        };
        if let Err(e) = backstop_listener::tls::load(&source, backstop_types::SystemClock.now()) {
            report(cert.error(e.to_string()));
        }
    }
    let recipients_ldap = config.ldap.as_ref().and_then(|l| ldap(l, &mut report));
    let auth_ldap = config.auth.ldap.as_ref().and_then(|l| ldap(l, &mut report));
    let routes = config
        .routes
        .iter()
        .map(|r| route(r, &mut report))
        .collect();
    let mut keys = Vec::new();
    for key in &config.dkim {
        match backstop_delivery::dkim::DomainKey::load(
            key.domain.clone(),
            &key.selector,
            &key.key_file.value,
        ) {
            Ok(loaded) => keys.push(loaded),
            Err(e) => report(key.key_file.error(e.to_string())),
        }
    }
    let batv = config.batv.as_ref().and_then(|b| match &b.keys {
        BatvKeys::Generated { file } => Some(BatvSource::Generated {
            file: file.clone(),
            lifetime_days: b.lifetime_days,
        }),
        BatvKeys::Files { keys, sign_with } => {
            let secrets = read_secrets(keys, &mut report);
            if secrets.len() < keys.len() {
                return None;
            }
            match backstop_batv::Keys::new(&secrets, *sign_with, b.lifetime_days) {
                Ok(keys) => Some(BatvSource::Keys(Box::new(keys))),
                Err(e) => {
                    let about = match e {
                        backstop_batv::KeyError::TooShort(n)
                        | backstop_batv::KeyError::Duplicate(n)
                        | backstop_batv::KeyError::BadNumber(n) => Some(n),
                        _ => None,
                    };
                    if let Some(at) = key_file(keys, about) {
                        report(at.error(format!("batv: {e}")));
                    }
                    None
                }
            }
        }
    });
    let quarantine_keys = match &config.quarantine.keys {
        BatvKeys::Generated { .. } => None,
        BatvKeys::Files { keys, sign_with } => {
            let secrets = read_secrets(keys, &mut report);
            // A file that cannot be read is reported already.
            let complete = secrets.len() == keys.len();
            match backstop_web::token::TokenKeys::new(secrets, *sign_with) {
                Ok(keys) if complete => Some(keys),
                Ok(_) => None,
                // The signing key's file is the one that could not be read.
                Err(backstop_web::token::TokenError::NoSigningKey(_)) if !complete => None,
                Err(e) => {
                    let about = match e {
                        backstop_web::token::TokenError::SecretTooShort(n)
                        | backstop_web::token::TokenError::DuplicateKeyId(n)
                        | backstop_web::token::TokenError::KeyIdOutOfRange(n) => Some(n),
                        _ => None,
                    };
                    if let Some(at) = key_file(keys, about) {
                        report(at.error(format!("quarantine: {e}")));
                    }
                    None
                }
            }
        }
    };
    let admin = match &config.admin {
        AdminEndpoint::Unix(path) => Admin::Unix(path.clone()),
        AdminEndpoint::Http {
            address,
            token_file,
            socket,
        } => match token(token_file) {
            Ok(token) => Admin::Http {
                address: *address,
                token,
                socket: socket.clone(),
            },
            Err(e) => {
                report(e);
                Admin::Unix(config.data_dir.join("admin.sock"))
            }
        },
    };
    Setup {
        recipients,
        users,
        ldap: recipients_ldap,
        auth_ldap,
        routes,
        dkim: Arc::new(backstop_delivery::dkim::Keys::new(keys)),
        batv,
        quarantine_keys,
        admin,
        config,
    }
}

/// The secrets of numbered key files (BATV's, the quarantine's), trimmed; a file that cannot
/// be read is reported and left out.
fn read_secrets(
    keys: &[(u8, Located<PathBuf>)],
    report: &mut impl FnMut(ConfigError),
) -> Vec<(u8, Vec<u8>)> {
    let mut secrets = Vec::new();
    for (number, file) in keys {
        match read(file) {
            Ok(secret) => secrets.push((*number, secret.trim_ascii().to_vec())),
            Err(e) => report(e),
        }
    }
    secrets
}

/// Where a key problem is said: at the file of key `number`, or of the first key.
fn key_file(keys: &[(u8, Located<PathBuf>)], number: Option<u8>) -> Option<&Located<PathBuf>> {
    number
        .and_then(|n| keys.iter().find(|(k, _)| *k == n))
        .or(keys.first())
        .map(|(_, f)| f)
}

/// A file's bytes; a problem is reported where the config names it.
fn read(file: &Located<PathBuf>) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(&file.value).map_err(|e| file.error(format!("{}: {e}", file.value.display())))
}

/// A secret held in a file: its text without the line end an editor adds.
fn secret(file: &Located<PathBuf>) -> Result<String, ConfigError> {
    let bytes = read(file)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| file.error(format!("{}: not UTF-8 text", file.value.display())))?;
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

fn users(config: &Config, report: &mut impl FnMut(ConfigError)) -> UserStore {
    // Checked line by line when the config was read.
    let inline = UserStore::parse(&config.auth.inline_users, Path::new("[[auth.user]]"))
        .unwrap_or_else(|_| UserStore::parse("", Path::new("")).expect("no users is a store"));
    let users = match &config.auth.users_file {
        None => inline,
        Some(file) => match UserStore::load(&file.value).and_then(|u| u.merge(inline)) {
            Ok(users) => users,
            Err(e) => {
                report(file.error(e.to_string()));
                UserStore::parse("", Path::new("")).expect("no users is a store")
            }
        },
    };
    match config.auth.restrict_sender {
        true => users.with_sender_policy(SenderPolicy::Owned {
            local_domains: config.smtp.local_domains.clone(),
        }),
        false => users,
    }
}

fn ldap(l: &Ldap, report: &mut impl FnMut(ConfigError)) -> Option<LdapConfig> {
    let bind = match &l.bind {
        None => None,
        Some(bind) => match secret(&bind.password_file) {
            Ok(password) => Some((bind.dn.clone(), password)),
            Err(e) => {
                report(e);
                return None;
            }
        },
    };
    let tls = match &l.tls_ca_file {
        None => None,
        Some(file) => match backstop_smtp_client::tls::verifying_config(&file.value) {
            Ok(tls) => Some(tls),
            Err(e) => {
                report(file.error(e));
                return None;
            }
        },
    };
    Some(LdapConfig {
        url: l.url.clone(),
        starttls: l.starttls,
        tls,
        bind,
        base: l.base.clone(),
        filter: l.filter.clone(),
        timeout: l.timeout,
        positive_ttl: l.positive_ttl,
        negative_ttl: l.negative_ttl,
        address_attribute: l.address_attribute.clone(),
    })
}

fn route(r: &RouteConfig, report: &mut impl FnMut(ConfigError)) -> Route {
    let tls = match &r.tls {
        RouteTls::Off => TlsPolicy::Off,
        RouteTls::May => TlsPolicy::Opportunistic,
        RouteTls::Require { ca_file } => {
            match backstop_smtp_client::tls::verifying_config(&ca_file.value) {
                Ok(tls) => TlsPolicy::Require(tls),
                Err(e) => {
                    report(ca_file.error(e));
                    TlsPolicy::Off
                }
            }
        }
    };
    let auth = r.auth.as_ref().and_then(|auth| {
        secret(&auth.password_file)
            .map(|password| Credentials {
                user: auth.user.clone(),
                password,
            })
            .map_err(&mut *report)
            .ok()
    });
    Route {
        config: r.clone(),
        tls,
        auth,
    }
}

/// The admin API's bearer token: its only lock, so a file others can read or change, or a
/// short token, is refused.
fn token(file: &Located<PathBuf>) -> Result<String, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let shown = file.value.display();
    let mode = std::fs::metadata(&file.value)
        .map_err(|e| file.error(format!("{shown}: {e}")))?
        .permissions()
        .mode();
    if mode & 0o027 != 0 {
        return Err(file.error(format!(
            "{shown}: mode {:o} lets others read or change the admin token; make it readable \
             by its owner only (chmod 600)",
            mode & 0o777
        )));
    }
    let token = secret(file)?.trim().to_owned();
    if token.len() < 16 {
        return Err(file.error(format!("{shown}: the token must be at least 16 characters")));
    }
    Ok(token)
}

#[cfg(test)]
mod tests;
