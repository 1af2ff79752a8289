//! Recipient validation against an LDAP directory (OpenLDAP, Active Directory): a search under
//! a base with a filter such as `(mail=%s)`, where `%s` is the address (escaped). Connections
//! are kept for reuse; answers are cached (positive and negative, each with its TTL). A
//! directory that cannot answer is [`Verdict::Unavailable`]: the client hears 451, never 250.

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
}

/// The source: its config, idle connections, and the cache.
pub struct LdapSource {
    config: LdapConfig,
    idle: Mutex<Vec<Ldap>>,
    cache: Mutex<HashMap<String, (bool, Instant)>>,
}

/// Idle connections kept for reuse.
const POOL: usize = 8;

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
                self.lock_cache().insert(key, (known, Instant::now() + ttl));
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

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (bool, Instant)>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn search(&self, address: &str) -> Result<bool, String> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let mut ldap = match pooled {
            Some(ldap) => ldap,
            None => self.connect().await?,
        };
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
                let mut idle = self
                    .idle
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if idle.len() < POOL {
                    idle.push(ldap);
                }
                Ok(found)
            }
            // A connection that failed is dropped, not pooled.
            Err(e) => Err(e.to_string()),
        }
    }

    async fn connect(&self) -> Result<Ldap, String> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.config.timeout)
            .set_starttls(self.config.starttls);
        if let Some(tls) = &self.config.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.config.url)
            .await
            .map_err(|e| e.to_string())?;
        ldap3::drive!(conn);
        if let Some((dn, password)) = &self.config.bind {
            ldap.with_timeout(self.config.timeout)
                .simple_bind(dn, password)
                .await
                .and_then(|r| r.success())
                .map_err(|e| format!("bind as {dn}: {e}"))?;
        }
        Ok(ldap)
    }
}
