//! Recipient validation: which local addresses exist, and where they lead.
//!
//! The table file has one entry per line, `#` comments and blank lines allowed:
//!
//! ```text
//! bob@example.com                          # a mailbox
//! sales@example.com   alice@example.com, bob@example.com   # an alias (one or more targets)
//! @example.org                             # a catch-all: any local part is accepted
//! @example.net        postmaster@example.com   # a catch-all that redirects
//! ```
//!
//! Exact addresses win over catch-alls. Local parts match without regard to case (as most
//! mail systems do), domains always so. Targets are what the envelope records; a table is
//! read whole or not at all, so a bad edit never leaves a half-loaded table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use backstop_types::{Address, Domain};

/// What a recipient source says about an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It exists; deliver to these addresses (the address itself, or its alias targets).
    Accept(Vec<Address>),
    /// No such recipient: 550 5.1.1.
    Unknown,
    /// The source could not answer (LDAP down, next hop down): 451 4.4.3. Never an accept.
    Unavailable(String),
}

/// A table that cannot be loaded, with the place to look.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Line {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

/// A parsed recipient table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Lower-cased address → targets (the address itself for a plain mailbox).
    exact: HashMap<String, Vec<Address>>,
    /// Domain → targets (empty: keep the address as given).
    catch_all: HashMap<Domain, Vec<Address>>,
}

impl Table {
    pub fn load(file: &Path) -> Result<Table, TableError> {
        let text = std::fs::read_to_string(file).map_err(|source| TableError::Read {
            file: file.to_owned(),
            source,
        })?;
        Table::parse(&text, file)
    }

    /// Parses the table's text; `file` only names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Table, TableError> {
        let mut table = Table::default();
        for (i, line) in text.lines().enumerate() {
            let err = |message: String| TableError::Line {
                file: file.to_owned(),
                line: i + 1,
                message,
            };
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let (key, rest) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(k, r)| (k, r.trim()));
            let catch_all = match key.strip_prefix('@') {
                Some(domain) => {
                    Some(Domain::parse(domain).map_err(|e| err(format!("{key:?}: {e}")))?)
                }
                None => None,
            };
            let address = match catch_all {
                Some(_) => None,
                None => Some(Address::parse(key).map_err(|e| err(format!("{key:?}: {e}")))?),
            };
            let mut targets = Vec::new();
            for target in rest.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                targets.push(
                    Address::parse(target).map_err(|e| err(format!("target {target:?}: {e}")))?,
                );
            }
            let duplicate = match (catch_all, address) {
                (Some(domain), _) => table.catch_all.insert(domain, targets).is_some(),
                (None, Some(address)) => {
                    if targets.is_empty() {
                        targets.push(address.clone());
                    }
                    table.exact.insert(lower(&address), targets).is_some()
                }
                (None, None) => false,
            };
            if duplicate {
                return Err(err(format!("{key} is listed twice")));
            }
        }
        Ok(table)
    }

    /// Whether the table knows the address.
    pub fn check(&self, address: &Address) -> Verdict {
        if let Some(targets) = self.exact.get(&lower(address)) {
            return Verdict::Accept(targets.clone());
        }
        match self.catch_all.get(address.domain()) {
            Some(targets) if targets.is_empty() => Verdict::Accept(vec![address.clone()]),
            Some(targets) => Verdict::Accept(targets.clone()),
            None => Verdict::Unknown,
        }
    }

    /// Whether the table has any entry for this domain (else it does not judge the domain).
    pub fn covers(&self, domain: &Domain) -> bool {
        self.catch_all.contains_key(domain)
            || self
                .exact
                .keys()
                .any(|a| a.ends_with(&format!("@{domain}")))
    }
}

fn lower(address: &Address) -> String {
    format!(
        "{}@{}",
        address.local_part().to_lowercase(),
        address.domain()
    )
}

/// The table file as the server uses it: shared by all sessions, reloaded on demand
/// ([`TableFile::reload`], on SIGHUP) and when the file's modification time changes
/// ([`TableFile::reload_if_changed`], polled). A table that fails to load is logged and the
/// previous one stays in force.
#[derive(Debug, Clone)]
pub struct TableFile {
    path: PathBuf,
    current: Arc<RwLock<Loaded>>,
}

#[derive(Debug)]
struct Loaded {
    table: Arc<Table>,
    modified: Option<SystemTime>,
}

impl TableFile {
    /// Loads the file; an error here is a configuration error (the server does not start).
    pub fn open(path: &Path) -> Result<TableFile, TableError> {
        let modified = modified(path);
        let table = Table::load(path)?;
        Ok(TableFile {
            path: path.to_owned(),
            current: Arc::new(RwLock::new(Loaded {
                table: Arc::new(table),
                modified,
            })),
        })
    }

    /// The table in force now.
    pub fn table(&self) -> Arc<Table> {
        let loaded = self.current.read().unwrap_or_else(|p| p.into_inner());
        Arc::clone(&loaded.table)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again. On error the old table stays and the error is returned.
    pub fn reload(&self) -> Result<(), TableError> {
        let modified = modified(&self.path);
        let table = Table::load(&self.path)?;
        let mut loaded = self.current.write().unwrap_or_else(|p| p.into_inner());
        *loaded = Loaded {
            table: Arc::new(table),
            modified,
        };
        Ok(())
    }

    /// Reloads if the file's modification time differs from the loaded one's. `Ok(true)` when
    /// it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TableError> {
        let now = modified(&self.path);
        let then = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .modified;
        if now == then {
            return Ok(false);
        }
        match self.reload() {
            Ok(()) => Ok(true),
            Err(e) => {
                // Remember the broken version's time so it is not retried every poll.
                self.current
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .modified = now;
                Err(e)
            }
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests;
