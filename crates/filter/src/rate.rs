//! Rate limits: how many connections, messages and recipients a client address or an
//! authenticated user may use per time window (fixed windows, as Postfix's anvil counts).
//!
//! The counting is the site's state's ([`backstop_state::State::add_in_window`]): in this
//! process's memory on one node, in Redis for several, so that a limit is the site's.

use std::time::Duration;

use crate::error::RateSyntax;

/// The rate limits of a site; `None` means no limit. Client limits apply to clients that
/// neither authenticated nor are in the local networks; user limits to authenticated users.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits {
    pub client_connections: Option<Limit>,
    pub client_messages: Option<Limit>,
    pub client_recipients: Option<Limit>,
    pub user_messages: Option<Limit>,
    pub user_recipients: Option<Limit>,
}

impl RateLimits {
    pub fn any(&self) -> bool {
        [
            self.client_connections,
            self.client_messages,
            self.client_recipients,
            self.user_messages,
            self.user_recipients,
        ]
        .iter()
        .any(Option::is_some)
    }
}

/// At most `count` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: u64,
    pub window: Duration,
}

impl Limit {
    /// Parses `"100/1h"`: a count, a slash, and a duration with unit s, m, h or d.
    pub fn parse(s: &str) -> Result<Limit, RateSyntax> {
        let bad = || RateSyntax::NotARate(s.to_owned());
        let (count, window) = s.split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let window = window.trim();
        let split = window
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(window.len());
        let (n, unit) = window.split_at(split);
        let n: u64 = if n.is_empty() {
            1
        } else {
            n.parse().map_err(|_| bad())?
        };
        let seconds = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(bad()),
        };
        if count == 0 || n == 0 {
            return Err(RateSyntax::Zero(s.to_owned()));
        }
        Ok(Limit {
            count,
            window: Duration::from_secs(n * seconds),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(
            Limit::parse("100/1h"),
            Ok(Limit {
                count: 100,
                window: Duration::from_secs(3600)
            })
        );
        assert_eq!(
            Limit::parse("30/m"),
            Ok(Limit {
                count: 30,
                window: Duration::from_secs(60)
            })
        );
        assert!(Limit::parse("100").is_err());
        assert!(Limit::parse("0/1h").is_err());
        assert!(Limit::parse("10/1w").is_err());
    }
}
