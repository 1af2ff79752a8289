//! An LDAP directory (OpenLDAP, Active Directory) as a source of recipients and of logins.
//!
//! Recipients: a search under a base with a filter such as `(mail=%s)`, where `%s` is the
//! address (escaped). Connections are kept for reuse; answers are cached (positive and
//! negative, each with its TTL). A directory that cannot answer is [`Verdict::Unavailable`]:
//! the client hears 451, never 250.
//!
//! Logins ([`LdapSource::authenticate`]): the filter finds the user's entry by login name
//! (as the configured account), then a bind as that entry with the given password decides;
//! the entry's address attribute lists the senders the user owns. Nothing is cached.

use crate::error::LookupError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backstop_types::Address;
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};

use crate::recipients::Verdict;

/// Where and how to look.
#[derive(Debug, Clone)]
pub struct LdapConfig {
    /// `ldap://host:389`, or `ldaps://host:636`.
    pub url: String,
    /// STARTTLS on an `ldap://` URL. Certificates are always verified, for the URL's host.
    pub starttls: bool,
    /// The TLS client for `ldaps://` and STARTTLS, trusting the configured CAs; `None` trusts
    /// the system's.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Bind as this DN with this password; anonymous when `None`.
    pub bind: Option<(String, String)>,
    pub base: String,
    /// `%s` is replaced by the escaped address, e.g. `(|(mail=%s)(mailAlias=%s))`.
    pub filter: String,
    /// For connecting and for each search.
    pub timeout: Duration,
    pub positive_ttl: Duration,
    pub negative_ttl: Duration,
    /// For logins: the attribute that lists a user's addresses (`mail`).
    pub address_attribute: String,
}

/// What a login attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// The password is right; the user's addresses (the address attribute's values).
    Valid(Vec<String>),
    /// No such user, several entries for the name, or the wrong password.
    Invalid,
}

/// The source: its config, idle connections, and the cache.
pub struct LdapSource {
    config: LdapConfig,
    idle: Mutex<Vec<Ldap>>,
    cache: Mutex<HashMap<String, (bool, Instant)>>,
}

/// Idle connections kept for reuse.
const POOL: usize = 8;

/// Answers cached at most.
const MAX_CACHED: usize = 50_000;

impl LdapSource {
    pub fn new(config: LdapConfig) -> LdapSource {
        LdapSource {
            config,
            idle: Mutex::new(Vec::new()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the directory knows `address`.
    pub async fn check(&self, address: &Address) -> Verdict {
        let key = address.to_string().to_ascii_lowercase();
        if let Some(known) = self.cached(&key) {
            return if known {
                Verdict::Accept(vec![address.clone()])
            } else {
                Verdict::Unknown
            };
        }
        match self.search(&key).await {
            Ok(known) => {
                let ttl = if known {
                    self.config.positive_ttl
                } else {
                    self.config.negative_ttl
                };
                self.remember(key, known, ttl);
                if known {
                    Verdict::Accept(vec![address.clone()])
                } else {
                    Verdict::Unknown
                }
            }
            Err(e) => Verdict::Unavailable(format!("LDAP {}: {e}", self.config.url)),
        }
    }

    fn cached(&self, key: &str) -> Option<bool> {
        let mut cache = self.lock_cache();
        match cache.get(key) {
            Some((known, until)) if *until > Instant::now() => Some(*known),
            Some(_) => {
                cache.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches an answer. The cache is bounded: past [`MAX_CACHED`] entries the expired ones
    /// go, and if that is not enough, all of them (a directory answers fast; memory must not
    /// grow with every address a spammer tries).
    fn remember(&self, key: String, known: bool, ttl: std::time::Duration) {
        let now = Instant::now();
        let mut cache = self.lock_cache();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (known, now + ttl));
    }

    /// Entries in the cache now.
    pub fn cached_entries(&self) -> usize {
        self.lock_cache().len()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (bool, Instant)>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn search(&self, address: &str) -> Result<bool, String> {
        // Escaped for the filter below; a line break has no place in an address at all.
        backstop_types::text::one_line("an LDAP filter value", address)
            .map_err(|e| e.to_string())?;
        let mut ldap = self.pooled().await?;
        let filter = self
            .config
            .filter
            .replace("%s", &ldap3::ldap_escape(address));
        let found = ldap
            .with_timeout(self.config.timeout)
            .search(&self.config.base, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .and_then(|r| r.success())
            .map(|(entries, _)| {
                entries
                    .into_iter()
                    .map(SearchEntry::construct)
                    .next()
                    .is_some()
            });
        match found {
            Ok(found) => {
                self.give_back(ldap);
                Ok(found)
            }
            // A connection that failed is dropped, not pooled.
            Err(e) => Err(e.to_string()),
        }
    }

    /// Checks `password` for the login `user`: `Err` when the directory cannot answer.
    pub async fn authenticate(&self, user: &str, password: &str) -> Result<Login, LookupError> {
        // An empty password would be an unauthenticated bind, which succeeds: never a login.
        // A name with a control character is no name any directory has.
        if password.is_empty() || user.is_empty() || backstop_types::text::has_control(user) {
            return Ok(Login::Invalid);
        }
        let failed = |e: String| LookupError(format!("LDAP {}: {e}", self.config.url));
        let mut ldap = self.pooled().await.map_err(failed)?;
        let filter = self.config.filter.replace("%s", &ldap3::ldap_escape(user));
        let attribute = self.config.address_attribute.as_str();
        let found = ldap
            .with_timeout(self.config.timeout)
            .search(&self.config.base, Scope::Subtree, &filter, vec![attribute])
            .await
            .and_then(|r| r.success())
            .map_err(|e| failed(e.to_string()))?;
        self.give_back(ldap);
        let mut entries: Vec<SearchEntry> =
            found.0.into_iter().map(SearchEntry::construct).collect();
        if entries.len() != 1 {
            return Ok(Login::Invalid);
        }
        let entry = entries.remove(0);
        // A connection of its own: a bind as the user must not change a pooled one.
        let mut own = self.open().await.map_err(failed)?;
        let bound = own
            .with_timeout(self.config.timeout)
            .simple_bind(&entry.dn, password)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let _ = own.unbind().await;
        match bound.rc {
            0 => Ok(Login::Valid(
                entry.attrs.get(attribute).cloned().unwrap_or_default(),
            )),
            // invalidCredentials
            49 => Ok(Login::Invalid),
            rc => Err(failed(format!("bind as {}: result code {rc}", entry.dn))),
        }
    }

    /// An idle connection, or a new one.
    async fn pooled(&self) -> Result<Ldap, String> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match pooled {
            Some(ldap) => Ok(ldap),
            None => self.connect().await,
        }
    }

    /// Keeps a connection that worked for reuse.
    fn give_back(&self, ldap: Ldap) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < POOL {
            idle.push(ldap);
        }
    }

    /// A new connection, bound as the configured account (if any).
    async fn connect(&self) -> Result<Ldap, String> {
        let mut ldap = self.open().await?;
        if let Some((dn, password)) = &self.config.bind {
            ldap.with_timeout(self.config.timeout)
                .simple_bind(dn, password)
                .await
                .and_then(|r| r.success())
                .map_err(|e| format!("bind as {dn}: {e}"))?;
        }
        Ok(ldap)
    }

    /// A new connection, TLS as configured, not bound.
    async fn open(&self) -> Result<Ldap, String> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.config.timeout)
            .set_starttls(self.config.starttls);
        if let Some(tls) = &self.config.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, ldap) = LdapConnAsync::with_settings(settings, &self.config.url)
            .await
            .map_err(|e| e.to_string())?;
        ldap3::drive!(conn);
        Ok(ldap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_stays_bounded() {
        let source = LdapSource::new(LdapConfig {
            url: "ldap://127.0.0.1:1".into(),
            starttls: false,
            tls: None,
            bind: None,
            base: "dc=example,dc=com".into(),
            filter: "(mail=%s)".into(),
            timeout: Duration::from_secs(1),
            positive_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(60),
            address_attribute: "mail".into(),
        });
        for n in 0..MAX_CACHED + 10 {
            source.remember(format!("u{n}@example.com"), false, Duration::from_secs(60));
            assert!(source.cached_entries() <= MAX_CACHED);
        }
        assert!(source
            .cached(&format!("u{}@example.com", MAX_CACHED + 9))
            .is_some());
    }

    #[tokio::test]
    async fn names_with_line_breaks_are_never_sent() {
        let source = LdapSource::new(LdapConfig {
            url: "ldap://127.0.0.1:1".into(),
            starttls: false,
            tls: None,
            bind: None,
            base: "dc=example,dc=com".into(),
            filter: "(uid=%s)".into(),
            timeout: Duration::from_secs(1),
            positive_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(60),
            address_attribute: "mail".into(),
        });
        // Refused before any connection is tried (the URL's port would refuse one anyway).
        assert_eq!(
            source.authenticate("bob\r\nx", "pw").await,
            Ok(Login::Invalid)
        );
        let err = source.search("a\nb@example.com").await.unwrap_err();
        assert!(err.contains("LF"), "{err}");
    }
}
