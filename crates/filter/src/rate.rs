//! Rate limits: how many connections, messages and recipients a client address or an
//! authenticated user may use per time window (fixed windows, as Postfix's anvil counts).
//!
//! Counters sit behind [`RateStore`]: in memory on one node today ([`MemoryRates`]), a shared
//! store for several nodes later. Time is passed in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use backstop_types::UnixTime;

use crate::error::{RateSyntax, StoreError};

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

/// Counts events per key and window.
pub trait RateStore: Send + Sync {
    /// Adds `amount` to the count of `key` in the window that holds `now`, and returns the
    /// new count.
    fn add(
        &self,
        key: &str,
        amount: u64,
        window: Duration,
        now: UnixTime,
    ) -> Result<u64, StoreError>;
}

/// Counters in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryRates {
    windows: Mutex<HashMap<String, (u64, u64)>>,
}

impl RateStore for MemoryRates {
    fn add(
        &self,
        key: &str,
        amount: u64,
        window: Duration,
        now: UnixTime,
    ) -> Result<u64, StoreError> {
        let width = window.as_secs().max(1);
        let start = now.0 - now.0 % width;
        // The map only guards counters; a panic elsewhere leaves them usable.
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() > 100_000 {
            // Keep memory bounded: forget windows that have ended.
            windows.retain(|_, (s, _)| *s + width > now.0);
        }
        let entry = windows.entry(key.to_owned()).or_insert((start, 0));
        if entry.0 != start {
            *entry = (start, 0);
        }
        entry.1 += amount;
        Ok(entry.1)
    }
}

/// Counts one more event for `key`; false when that goes over `limit`.
pub fn allow(
    store: &dyn RateStore,
    key: &str,
    limit: &Limit,
    now: UnixTime,
) -> Result<bool, StoreError> {
    Ok(store.add(key, 1, limit.window, now)? <= limit.count)
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

    #[test]
    fn counts_per_window_and_key() {
        let store = MemoryRates::default();
        let limit = Limit {
            count: 2,
            window: Duration::from_secs(60),
        };
        // The start of a minute: 1_800_000_000 is a multiple of 60.
        let t = UnixTime(1_800_000_000);
        assert!(allow(&store, "a", &limit, t).unwrap());
        assert!(allow(&store, "a", &limit, UnixTime(t.0 + 10)).unwrap());
        assert!(!allow(&store, "a", &limit, UnixTime(t.0 + 20)).unwrap());
        assert!(
            allow(&store, "b", &limit, UnixTime(t.0 + 20)).unwrap(),
            "other keys count apart"
        );
        assert!(
            allow(&store, "a", &limit, UnixTime(t.0 + 60)).unwrap(),
            "a new window starts over"
        );
    }
}
