//! The AUTH user file: one `name:hash` or `name:hash:senders` per line, `#` comments and blank
//! lines allowed. `senders` lists, comma-separated, the envelope senders the user may use:
//! addresses, and `@domain` for a whole domain. Without it a user owns their name at each local
//! domain (or the name itself when it is an address).
//!
//! Hashes are argon2 in PHC form (`$argon2id$...`, as `backstop hash-password` writes them),
//! SHA-512-crypt (`$6$...`, as `mkpasswd -m sha-512` writes them) or bcrypt (`$2y$...`), each
//! also with the `{SCHEME}` prefix Dovecot writes (`{ARGON2ID}`, `{SHA512-CRYPT}`,
//! `{BLF-CRYPT}`, `{CRYPT}`). A Dovecot passwd-file line (`user:{SCHEME}hash:uid:gid:...`) is
//! read as such: its name and hash, the other fields ignored. Plain-text passwords (also
//! `{PLAIN}`) are refused when the file is loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use backstop_session::{AuthOutcome, SenderRights};
use backstop_types::{Address, Domain};

/// A user file that cannot be used, with the place to look.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("user {0} is both in the users file and in the config")]
    Duplicate(String),
    #[error("{file}:{line}: {message}")]
    Line {
        file: PathBuf,
        line: usize,
        message: String,
    },
}

/// The users who may AUTH, by name.
#[derive(Debug, Clone, Default)]
pub struct UserStore {
    users: HashMap<String, User>,
    policy: SenderPolicy,
}

#[derive(Debug, Clone)]
struct User {
    hash: Hash,
    /// Senders listed for the user; empty: the default for the name.
    addresses: Vec<Address>,
    domains: Vec<Domain>,
}

/// Whether authenticated users are held to their own envelope senders.
#[derive(Debug, Clone, Default)]
pub enum SenderPolicy {
    /// Any sender (Postfix without `reject_sender_login_mismatch`).
    #[default]
    Any,
    /// Only the senders a user owns; unlisted users own their name at these domains.
    Owned { local_domains: Vec<Domain> },
}

#[derive(Debug, Clone)]
enum Hash {
    Argon2(String),
    ShaCrypt512(String),
    Bcrypt(String),
}

impl Hash {
    /// A hash as the file gives it, with or without Dovecot's `{SCHEME}` prefix.
    fn parse(text: &str) -> Result<Hash, String> {
        let (scheme, hash) = match text.strip_prefix('{').and_then(|t| t.split_once('}')) {
            Some((scheme, hash)) => (Some(scheme.to_ascii_uppercase()), hash),
            None => (None, text),
        };
        let kind = if hash.starts_with("$argon2") {
            PasswordHash::new(hash).map_err(|e| format!("is a bad argon2 hash: {e}"))?;
            Hash::Argon2(hash.to_owned())
        } else if hash.starts_with("$6$") {
            Hash::ShaCrypt512(hash.to_owned())
        } else if ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
            hash.parse::<bcrypt::HashParts>()
                .map_err(|e| format!("is a bad bcrypt hash: {e}"))?;
            Hash::Bcrypt(hash.to_owned())
        } else {
            return Err(
                "is not an argon2 ($argon2id$...), SHA-512-crypt ($6$...) or bcrypt ($2y$...) hash"
                    .into(),
            );
        };
        // The scheme must say what the hash is.
        let agrees = matches!(
            (scheme.as_deref(), &kind),
            (None | Some("CRYPT"), _)
                | (Some("ARGON2ID" | "ARGON2I"), Hash::Argon2(_))
                | (Some("SHA512-CRYPT"), Hash::ShaCrypt512(_))
                | (Some("BLF-CRYPT"), Hash::Bcrypt(_))
        );
        if !agrees {
            return Err(format!(
                "has the scheme {{{}}}, which is not what its hash is",
                scheme.unwrap_or_default()
            ));
        }
        Ok(kind)
    }
}

/// Verified against when the user does not exist, so that a wrong name costs as much time as a
/// wrong password and names cannot be probed by timing.
const DUMMY_ARGON2: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Ks2G8QxFSGNeLdPSR6d8Cmvn1vvx8M0lI3VZxrfzmhM";

impl UserStore {
    pub fn load(file: &Path) -> Result<UserStore, UsersError> {
        let text = std::fs::read_to_string(file).map_err(|source| UsersError::Read {
            file: file.to_owned(),
            source,
        })?;
        UserStore::parse(&text, file)
    }

    /// Parses the file's text; `file` only names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<UserStore, UsersError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let err = |message: String| UsersError::Line {
                file: file.to_owned(),
                line: i + 1,
                message,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(3, ':');
            let (Some(name), Some(hash)) = (fields.next(), fields.next()) else {
                return Err(err("expected name:hash or name:hash:senders".into()));
            };
            let (name, hash) = (name.trim(), hash.trim());
            // Dovecot's passwd-file: the fields after the hash are uid, gid, gecos, home,
            // shell and extra fields, not senders.
            let dovecot = hash.starts_with('{');
            let senders = if dovecot {
                ""
            } else {
                fields.next().unwrap_or("")
            };
            let mut addresses = Vec::new();
            let mut domains = Vec::new();
            for sender in senders.split(',').map(str::trim) {
                if sender.is_empty() {
                    continue;
                }
                match sender.strip_prefix('@') {
                    Some(domain) => domains.push(
                        Domain::parse(domain)
                            .map_err(|e| err(format!("sender {sender:?}: {e}")))?,
                    ),
                    None => addresses.push(
                        Address::parse(sender)
                            .map_err(|e| err(format!("sender {sender:?}: {e}")))?,
                    ),
                }
            }
            if name.is_empty() {
                return Err(err("empty user name".into()));
            }
            let hash = Hash::parse(hash).map_err(|why| {
                err(format!(
                    "the password of {name} {why}; plain-text passwords are not accepted \
                     (make a hash with `backstop hash-password`, or `doveadm pw -s SHA512-CRYPT`)"
                ))
            })?;
            let user = User {
                hash,
                addresses,
                domains,
            };
            if users.insert(name.to_owned(), user).is_some() {
                return Err(err(format!("user {name} is listed twice")));
            }
        }
        Ok(UserStore {
            users,
            policy: SenderPolicy::Any,
        })
    }

    /// Sets whether users are held to their own senders.
    pub fn with_sender_policy(mut self, policy: SenderPolicy) -> UserStore {
        self.policy = policy;
        self
    }

    /// The senders `name` may use, under the store's policy.
    fn rights(&self, name: &str, user: &User) -> SenderRights {
        let SenderPolicy::Owned { local_domains } = &self.policy else {
            return SenderRights::Any;
        };
        if !user.addresses.is_empty() || !user.domains.is_empty() {
            return SenderRights::Only {
                addresses: user.addresses.clone(),
                domains: user.domains.clone(),
            };
        }
        let addresses = match Address::parse(name) {
            Ok(address) => vec![address],
            Err(_) => local_domains
                .iter()
                .filter_map(|d| Address::new(name, d.clone()).ok())
                .collect(),
        };
        SenderRights::Only {
            addresses,
            domains: Vec::new(),
        }
    }

    /// Both stores in one; a name in both is an error.
    pub fn merge(mut self, other: UserStore) -> Result<UserStore, UsersError> {
        for (name, hash) in other.users {
            if self.users.contains_key(&name) {
                return Err(UsersError::Duplicate(name));
            }
            self.users.insert(name, hash);
        }
        Ok(self)
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether the file (or the config) lists `user`.
    pub fn knows(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// The rights of a user another source (a directory, Dovecot) vouched for: the `addresses`
    /// it lists, and the login itself when it is an address; with neither, the login's name at
    /// each local domain, as for a users-file entry without addresses. Anything when senders
    /// are not restricted.
    pub fn rights_of_other(&self, user: &str, addresses: &[String]) -> SenderRights {
        if matches!(self.policy, SenderPolicy::Any) {
            return SenderRights::Any;
        }
        let mut listed: Vec<Address> = addresses
            .iter()
            .map(String::as_str)
            .chain(std::iter::once(user))
            .filter_map(|a| Address::parse(a).ok())
            .collect();
        if listed.is_empty() {
            let SenderPolicy::Owned { local_domains } = &self.policy else {
                return SenderRights::Any;
            };
            listed = local_domains
                .iter()
                .filter_map(|d| Address::new(user, d.clone()).ok())
                .collect();
        }
        SenderRights::Only {
            addresses: listed,
            domains: Vec::new(),
        }
    }

    /// Checks a password. CPU-heavy by design (tens of milliseconds): call it off the async
    /// runtime's worker threads.
    pub fn verify(&self, user: &str, password: &str) -> AuthOutcome {
        let Some(found) = self.users.get(user) else {
            verify_argon2(DUMMY_ARGON2, password);
            return AuthOutcome::Failure;
        };
        let ok = match &found.hash {
            Hash::Argon2(hash) => verify_argon2(hash, password),
            Hash::ShaCrypt512(hash) => sha_crypt::sha512_check(password, hash).is_ok(),
            Hash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
        };
        if ok {
            AuthOutcome::Success(self.rights(user, found))
        } else {
            AuthOutcome::Failure
        }
    }
}

fn verify_argon2(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// An argon2id hash of `password` in PHC form, for the user file.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2_and_sha512_crypt() {
        let argon = hash_password("s3cret").unwrap();
        // `mkpasswd -m sha-512 -S saltsalt s3cret`
        let sha = "$6$saltsalt$As4wrv0kZlfch1du9WeH7qhskyLriQWySXrZzynnvi46nFnNxjdpl6ksRegrrKexvhIa/Iny8S8uF3fVWTMuC1";
        let text = format!("# users\nalice:{argon}\n\nbob : {sha}\n");
        let store = UserStore::parse(&text, Path::new("users")).unwrap();
        let any = AuthOutcome::Success(SenderRights::Any);
        assert_eq!(store.verify("alice", "s3cret"), any);
        assert_eq!(store.verify("alice", "wrong"), AuthOutcome::Failure);
        assert_eq!(store.verify("bob", "s3cret"), any);
        assert_eq!(store.verify("bob", "S3cret"), AuthOutcome::Failure);
        assert_eq!(store.verify("mallory", "s3cret"), AuthOutcome::Failure);
    }

    #[test]
    fn dovecot_schemes_and_passwd_file_lines() {
        // `doveadm pw -s SHA512-CRYPT -p s3cret`, `doveadm pw -s BLF-CRYPT -r 5 -p s3cret`,
        // and the argon2 hash of hash_password under Dovecot's {ARGON2ID}.
        let sha = "{SHA512-CRYPT}$6$saltsalt$As4wrv0kZlfch1du9WeH7qhskyLriQWySXrZzynnvi46nFnNxjdpl6ksRegrrKexvhIa/Iny8S8uF3fVWTMuC1";
        let blf = format!(
            "{{BLF-CRYPT}}{}",
            bcrypt::hash_with_salt("s3cret", 5, [7; 16])
                .unwrap()
                .format_for_version(bcrypt::Version::TwoY)
        );
        let argon = format!("{{ARGON2ID}}{}", hash_password("s3cret").unwrap());
        let text = format!(
            "alice@example.com:{sha}:1000:1000::/home/alice::userdb_quota_rule=*:storage=1G
             bob@example.com:{blf}::::::
carol:{argon}
"
        );
        let store = UserStore::parse(&text, Path::new("passwd")).unwrap();
        let any = AuthOutcome::Success(SenderRights::Any);
        for user in ["alice@example.com", "bob@example.com", "carol"] {
            assert_eq!(store.verify(user, "s3cret"), any, "{user}");
            assert_eq!(store.verify(user, "wrong"), AuthOutcome::Failure, "{user}");
        }
        for bad in ["u:{PLAIN}secret", "u:{SHA512-CRYPT}$2y$05$x", "u:{MD5}abc"] {
            assert!(UserStore::parse(bad, Path::new("p")).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_name_file_and_line() {
        let err = UserStore::parse("# x\nalice:plaintext\n", Path::new("/etc/backstop/users"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/backstop/users:2: the password of alice is not"),
            "{err}"
        );
        let err = UserStore::parse("nocolon\n", Path::new("u"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "u:1: expected name:hash or name:hash:senders");
        let hash = hash_password("x").unwrap();
        let err = UserStore::parse(&format!("a:{hash}:@bad..domain\n"), Path::new("u"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("u:1: sender \"@bad..domain\": "), "{err}");
    }

    #[test]
    fn sender_rights_follow_the_policy() {
        let hash = hash_password("pw").unwrap();
        let text = format!(
            "alice:{hash}\nbob@example.org:{hash}\ncarol:{hash}:carol@example.net, @sales.example\n"
        );
        let local = vec![
            Domain::parse("example.com").unwrap(),
            Domain::parse("example.net").unwrap(),
        ];
        let store = UserStore::parse(&text, Path::new("users"))
            .unwrap()
            .with_sender_policy(SenderPolicy::Owned {
                local_domains: local,
            });
        let a = |s: &str| Address::parse(s).unwrap();
        let only = |addresses: Vec<Address>, domains: Vec<&str>| {
            AuthOutcome::Success(SenderRights::Only {
                addresses,
                domains: domains
                    .into_iter()
                    .map(|d| Domain::parse(d).unwrap())
                    .collect(),
            })
        };
        assert_eq!(
            store.verify("alice", "pw"),
            only(vec![a("alice@example.com"), a("alice@example.net")], vec![])
        );
        assert_eq!(
            store.verify("bob@example.org", "pw"),
            only(vec![a("bob@example.org")], vec![])
        );
        assert_eq!(
            store.verify("carol", "pw"),
            only(vec![a("carol@example.net")], vec!["sales.example"])
        );
        // Logins another source vouched for (LDAP, Dovecot) follow the same rule.
        let vouched = |user: &str, listed: &[&str]| {
            let listed: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
            AuthOutcome::Success(store.rights_of_other(user, &listed))
        };
        assert_eq!(
            vouched("dave", &[]),
            only(vec![a("dave@example.com"), a("dave@example.net")], vec![])
        );
        assert_eq!(
            vouched("dave@example.org", &[]),
            only(vec![a("dave@example.org")], vec![])
        );
        assert_eq!(
            vouched("dave", &["d@example.net"]),
            only(vec![a("d@example.net")], vec![])
        );
    }
}
