//! State in this process's memory: the node's own rate counters (the embedded default's, and
//! the fallback when the site's store cannot answer), and a whole [`State`] for tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use backstop_types::UnixTime;

use crate::{window_start, Answer, Key, State};

/// Keys [`MemoryCounters`] holds at most.
pub const MAX_COUNTERS: usize = 100_000;

/// Counters per key in fixed windows, in memory. Bounded: past [`MAX_COUNTERS`] keys, counters
/// whose own window has ended are forgotten, and if that is not enough, the half that counted
/// least (a flood of one-off keys must not push out the few that count a lot: a password
/// guesser's). Reading a count (adding 0) keeps nothing for a key not counted yet.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    windows: Mutex<HashMap<Key, Counter>>,
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    /// The window's start and end (each counter's own width: rate limits and failed logins
    /// count in windows of different lengths).
    start: u64,
    end: u64,
    count: u64,
}

impl MemoryCounters {
    /// Adds `amount` to `key`'s count in the window of `window` holding `now`; the new count.
    pub fn add(&self, key: &Key, amount: u64, window: Duration, now: UnixTime) -> u64 {
        let width = window.as_secs().max(1);
        let start = window_start(window, now);
        // The map only guards counters; a panic elsewhere leaves them usable.
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = Counter {
            start,
            end: start.saturating_add(width),
            count: 0,
        };
        if amount == 0 {
            return windows
                .get(key)
                .filter(|c| c.start == start && c.end == fresh.end)
                .map_or(0, |c| c.count);
        }
        if windows.len() >= MAX_COUNTERS && !windows.contains_key(key) {
            windows.retain(|_, c| c.end > now.0);
            if windows.len() >= MAX_COUNTERS {
                // Keep the half that counted most.
                let mut counts: Vec<u64> = windows.values().map(|c| c.count).collect();
                let middle = counts.len() / 2;
                let (_, median, _) = counts.select_nth_unstable(middle);
                let median = *median;
                windows.retain(|_, c| c.count > median);
            }
        }
        let entry = windows.entry(key.clone()).or_insert(fresh);
        if entry.start != start || entry.end != fresh.end {
            *entry = fresh;
        }
        entry.count = entry.count.saturating_add(amount);
        entry.count
    }

    /// How many keys are counted now.
    pub fn len(&self) -> usize {
        self.windows.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A whole [`State`] in memory: values with their expiry, and [`MemoryCounters`]. For tests,
/// and for a node that keeps nothing across restarts.
#[derive(Debug, Default)]
pub struct MemoryState {
    values: Mutex<HashMap<Key, (Vec<u8>, UnixTime)>>,
    counters: MemoryCounters,
}

impl MemoryState {
    /// How many values are kept (expired ones included until the next put).
    pub fn len(&self) -> usize {
        self.values.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl State for MemoryState {
    fn get<'a>(&'a self, key: &'a Key, now: UnixTime) -> Answer<'a, Option<Vec<u8>>> {
        let values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        let value = values
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .map(|(v, _)| v.clone());
        Box::pin(std::future::ready(Ok(value)))
    }

    fn put<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        expires: UnixTime,
        now: UnixTime,
    ) -> Answer<'a, ()> {
        let mut values = self.values.lock().unwrap_or_else(|p| p.into_inner());
        if values.len() > 100_000 {
            values.retain(|_, (_, e)| *e > now);
        }
        values.insert(key.clone(), (value.to_vec(), expires));
        Box::pin(std::future::ready(Ok(())))
    }

    fn add_in_window<'a>(
        &'a self,
        key: &'a Key,
        amount: u64,
        window: Duration,
        now: UnixTime,
    ) -> Answer<'a, u64> {
        let count = self.counters.add(key, amount, window, now);
        Box::pin(std::future::ready(Ok(count)))
    }

    fn describe(&self) -> String {
        "this process's memory".to_owned()
    }
}

/// A store that cannot be reached: every call fails at once. For the tests of each caller's
/// rule for a store that does not answer.
#[derive(Debug, Default)]
pub struct Unreachable;

impl Unreachable {
    fn error() -> crate::StateError {
        crate::StateError::Unreachable("store down".into())
    }
}

impl State for Unreachable {
    fn get<'a>(&'a self, _: &'a Key, _: UnixTime) -> Answer<'a, Option<Vec<u8>>> {
        Box::pin(std::future::ready(Err(Unreachable::error())))
    }

    fn put<'a>(&'a self, _: &'a Key, _: &'a [u8], _: UnixTime, _: UnixTime) -> Answer<'a, ()> {
        Box::pin(std::future::ready(Err(Unreachable::error())))
    }

    fn add_in_window<'a>(
        &'a self,
        _: &'a Key,
        _: u64,
        _: Duration,
        _: UnixTime,
    ) -> Answer<'a, u64> {
        Box::pin(std::future::ready(Err(Unreachable::error())))
    }

    fn describe(&self) -> String {
        "nowhere (unreachable)".into()
    }
}
