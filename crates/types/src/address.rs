//! Mail addresses and domains, parsed once at the edge ("parse, don't validate").

use std::fmt;

/// A domain name (or an address literal such as `[192.0.2.1]`), stored lower-case.
///
/// Internationalised domains are kept as UTF-8 as received (SMTPUTF8); no IDNA mapping is done.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

/// Why a string is not an [`Address`] or a [`Domain`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("the domain is empty")]
    EmptyDomain,
    #[error("the domain is longer than 255 octets")]
    DomainTooLong,
    #[error("the domain has an empty label or a label longer than 63 octets")]
    BadLabel,
    #[error("the domain contains the character {0:?}")]
    BadDomainChar(char),
    #[error("the address has no '@'")]
    NoAt,
    #[error("the local part is empty")]
    EmptyLocalPart,
    #[error("the local part is longer than 64 octets")]
    LocalPartTooLong,
    #[error("the local part contains a control character")]
    BadLocalPart,
}

impl Domain {
    pub fn parse(s: &str) -> Result<Domain, AddressError> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() {
            return Err(AddressError::EmptyDomain);
        }
        if s.len() > 255 {
            return Err(AddressError::DomainTooLong);
        }
        if s.starts_with('[') && s.ends_with(']') {
            // An address literal: checked loosely, it is only ever compared and printed.
            if let Some(c) = s[1..s.len() - 1]
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-')))
            {
                return Err(AddressError::BadDomainChar(c));
            }
            return Ok(Domain(s.to_ascii_lowercase()));
        }
        for label in s.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(AddressError::BadLabel);
            }
            if let Some(c) = label
                .chars()
                .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || !c.is_ascii()))
            {
                return Err(AddressError::BadDomainChar(c));
            }
        }
        Ok(Domain(s.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this domain needs SMTPUTF8 to be sent.
    pub fn is_ascii(&self) -> bool {
        self.0.is_ascii()
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A mailbox `local@domain`. The local part keeps its case (RFC 5321 2.4); the domain is
/// lower-case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    local: String,
    domain: Domain,
}

impl Address {
    /// Parses `local@domain`, splitting at the last `@` (a quoted local part may contain one).
    /// A quoted local part (`"john doe"@example.com`, as [`Address`]'s `Display` writes it) is
    /// unquoted, so that printing and parsing again gives the same address.
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        let (local, domain) = s.rsplit_once('@').ok_or(AddressError::NoAt)?;
        let domain = Domain::parse(domain)?;
        match unquote(local) {
            Some(unquoted) => Address::new(&unquoted, domain),
            None => Address::new(local, domain),
        }
    }

    pub fn new(local: &str, domain: Domain) -> Result<Address, AddressError> {
        if local.is_empty() {
            return Err(AddressError::EmptyLocalPart);
        }
        if local.len() > 64 {
            return Err(AddressError::LocalPartTooLong);
        }
        if local.chars().any(|c| c.is_control()) {
            return Err(AddressError::BadLocalPart);
        }
        Ok(Address {
            local: local.to_owned(),
            domain,
        })
    }

    pub fn local_part(&self) -> &str {
        &self.local
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// Whether this address needs SMTPUTF8 to be sent.
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }

    /// The local part as it must appear on the wire: quoted when it is not a dot-atom.
    fn wire_local_part(&self) -> std::borrow::Cow<'_, str> {
        let is_atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
        let dot_atom = !self.local.starts_with('.')
            && !self.local.ends_with('.')
            && !self.local.contains("..")
            && self
                .local
                .chars()
                .all(|c| is_atext(c) || c == '.' || !c.is_ascii());
        if dot_atom {
            std::borrow::Cow::Borrowed(&self.local)
        } else {
            let mut quoted = String::with_capacity(self.local.len() + 2);
            quoted.push('"');
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    quoted.push('\\');
                }
                quoted.push(c);
            }
            quoted.push('"');
            std::borrow::Cow::Owned(quoted)
        }
    }
}

/// The content of a quoted-string local part (RFC 5321 4.1.2), or `None` when `local` is not
/// one: the surrounding quotes dropped and each `\\x` pair taken as `x`.
fn unquote(local: &str) -> Option<String> {
    let inner = local.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next()?),
            // An unescaped quote inside: not one quoted string.
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.wire_local_part(), self.domain)
    }
}

/// The name of `address`'s Maildir folder (its local part, lower-case), or `None` when the
/// local part cannot be one: a path separator, a leading dot (`.`, `..`, hidden folders) or a
/// NUL. The session refuses such recipients at RCPT for domains delivered into Maildirs, so
/// they are never accepted and then failed.
pub fn maildir_folder_name(address: &Address) -> Option<String> {
    let local = address.local_part().to_lowercase();
    let safe = !local.is_empty()
        && !local.starts_with('.')
        && !local.contains(['/', '\\', '\0'])
        && local.len() <= 64;
    safe.then_some(local)
}

/// The SMTP reverse path: an address, or the null sender `<>` of bounces (RFC 5321 4.5.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    Null,
    Address(Address),
}

impl ReversePath {
    pub fn address(&self) -> Option<&Address> {
        match self {
            ReversePath::Null => None,
            ReversePath::Address(a) => Some(a),
        }
    }
}

impl fmt::Display for ReversePath {
    /// Prints the path in angle brackets, as in `MAIL FROM:<...>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Address(a) => write!(f, "<{a}>"),
        }
    }
}

#[cfg(test)]
mod tests;
