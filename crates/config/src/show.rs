//! `backstop config show`: the config as the server reads it, every key of every section
//! with the file's value or the default (as `postconf` shows main.cf), in the file's own
//! syntax; and with `--defaults`, the defaults alone (`postconf -d`). Password hashes and the
//! password in a Redis URL are not shown.

use serde::Serialize;

/// Each section as read (after defaults, before the checks), in the order the server reads
/// them.
#[derive(Debug, Default)]
pub struct Shown {
    sections: Vec<(&'static str, toml::Value)>,
}

impl Shown {
    /// Adds section `name` (a table, or an array of tables such as `[[listener]]`).
    pub(crate) fn add<T: Serialize>(&mut self, name: &'static str, raw: &T) {
        // Every raw section is a table or a list of tables of plain values: it serializes.
        if let Ok(mut value) = toml::Value::try_from(raw) {
            hide_secrets(&mut value);
            self.sections.push((name, value));
        }
    }

    /// The TOML text: the top-level keys, then each section that has keys.
    pub fn render(&self, top: &[(&str, toml::Value)]) -> String {
        let mut out = String::new();
        let mut table = toml::Table::new();
        for (key, value) in top {
            table.insert((*key).to_owned(), value.clone());
        }
        out.push_str(&toml::to_string(&table).unwrap_or_default());
        for (name, value) in &self.sections {
            let empty = match value {
                toml::Value::Table(t) => t.is_empty(),
                toml::Value::Array(a) => a.is_empty(),
                _ => false,
            };
            if empty {
                continue;
            }
            let mut table = toml::Table::new();
            table.insert((*name).to_owned(), value.clone());
            let text = toml::to_string(&table).unwrap_or_default();
            out.push('\n');
            out.push_str(&text);
        }
        out
    }
}

/// Password hashes become `(hidden)`; a URL's password, `***`.
fn hide_secrets(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table.iter_mut() {
                match (key.as_str(), &mut *value) {
                    ("password_hash", _) => *value = toml::Value::String("(hidden)".into()),
                    ("redis" | "redis_cluster", _) => hide_url_passwords(value),
                    _ => hide_secrets(value),
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(hide_secrets),
        _ => {}
    }
}

fn hide_url_passwords(value: &mut toml::Value) {
    match value {
        toml::Value::String(url) => *url = without_password(url),
        toml::Value::Array(items) => items.iter_mut().for_each(hide_url_passwords),
        _ => {}
    }
}

/// `scheme://user:secret@host` as `scheme://user:***@host`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = rest[..at].split(':').next().unwrap_or_default();
    format!("{scheme}://{user}:***{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            without_password("rediss://app:s3cret@redis.example:6380/0"),
            "rediss://app:***@redis.example:6380/0"
        );
        assert_eq!(
            without_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            without_password("redis+unix:///run/redis.sock"),
            "redis+unix:///run/redis.sock"
        );
    }
}
