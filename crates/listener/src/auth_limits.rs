//! Limits on password guessing, across connections: failed logins are counted per client
//! (an IPv6 client as its /64) and per user name in a window; each failure is answered after a
//! delay that grows with the count, and past the limit AUTH is refused for the rest of the
//! window (`454 4.7.0`) without a password check at all. Password checks themselves are
//! bounded by [`AuthLimits::checks`], so a burst of logins queues instead of growing memory
//! (each argon2 check takes about 19 MiB).
//!
//! The counts are the node's own, in memory: a restart forgets them, and they are bounded in
//! number (the oldest windows go first).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// The settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLimitConfig {
    /// Failed logins per client, and per user name, in one window before AUTH is refused.
    pub max_failures: u32,
    /// How long failures are remembered.
    pub window: Duration,
    /// The delay before a failure is answered grows by this per failure counted...
    pub delay_step: Duration,
    /// ...up to this.
    pub max_delay: Duration,
    /// Password checks running at once.
    pub max_concurrent_checks: usize,
}

impl Default for AuthLimitConfig {
    /// Close to what fail2ban's default jail does for Postfix's SASL failures (5 in 10
    /// minutes), but per user name too, so a botnet spread over many addresses is held back as
    /// well.
    fn default() -> AuthLimitConfig {
        AuthLimitConfig {
            max_failures: 5,
            window: Duration::from_secs(600),
            delay_step: Duration::from_secs(1),
            max_delay: Duration::from_secs(5),
            max_concurrent_checks: 4,
        }
    }
}

/// The limiter, shared by every session (and kept across reloads).
#[derive(Debug)]
pub struct AuthLimits {
    config: AuthLimitConfig,
    failures: Mutex<HashMap<Key, Window>>,
    checks: Arc<Semaphore>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Client(IpAddr),
    User(String),
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Windows kept at most; beyond this the oldest are dropped first.
const MAX_WINDOWS: usize = 100_000;

impl AuthLimits {
    pub fn new(config: AuthLimitConfig) -> AuthLimits {
        AuthLimits {
            checks: Arc::new(Semaphore::new(config.max_concurrent_checks.max(1))),
            config,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The same counts under new settings (a reload).
    pub fn resized(&self, config: AuthLimitConfig) -> AuthLimits {
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        AuthLimits {
            checks: Arc::new(Semaphore::new(config.max_concurrent_checks.max(1))),
            config,
            failures: Mutex::new(failures),
        }
    }

    /// The permits for password checks: hold one while a check runs.
    pub fn checks(&self) -> Arc<Semaphore> {
        Arc::clone(&self.checks)
    }

    /// Whether a login by `user` from `client` may be checked at all now.
    pub fn allowed(&self, client: IpAddr, user: &str, now: Instant) -> bool {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        [client_key(client), user_key(user)].iter().all(|key| {
            failures
                .get(key)
                .is_none_or(|w| self.expired(w, now) || w.failures < self.config.max_failures)
        })
    }

    /// Counts a failed login; returns how long to wait before answering it.
    pub fn failed(&self, client: IpAddr, user: &str, now: Instant) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= MAX_WINDOWS {
            self.sweep(&mut failures, now);
        }
        let mut worst = 0;
        for key in [client_key(client), user_key(user)] {
            let window = failures.entry(key).or_insert(Window {
                started: now,
                failures: 0,
            });
            if self.expired(window, now) {
                *window = Window {
                    started: now,
                    failures: 0,
                };
            }
            window.failures = window.failures.saturating_add(1);
            worst = worst.max(window.failures);
        }
        self.config
            .delay_step
            .saturating_mul(worst)
            .min(self.config.max_delay)
    }

    /// Windows remembered now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn expired(&self, window: &Window, now: Instant) -> bool {
        now.saturating_duration_since(window.started) >= self.config.window
    }

    /// Drops expired windows, and if that is not enough, the oldest half.
    fn sweep(&self, failures: &mut HashMap<Key, Window>, now: Instant) {
        failures.retain(|_, w| !self.expired(w, now));
        if failures.len() >= MAX_WINDOWS {
            let mut starts: Vec<Instant> = failures.values().map(|w| w.started).collect();
            starts.sort_unstable();
            let cut = starts[starts.len() / 2];
            failures.retain(|_, w| w.started > cut);
        }
    }
}

/// A client's key: its address, an IPv6 client's /64 (one host usually has a whole /64).
fn client_key(ip: IpAddr) -> Key {
    Key::Client(crate::limits::client_network(ip))
}

/// A user name's key: case-folded, as user stores usually compare names.
fn user_key(user: &str) -> Key {
    Key::User(user.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AuthLimits {
        AuthLimits::new(AuthLimitConfig {
            max_failures: 3,
            window: Duration::from_secs(60),
            delay_step: Duration::from_secs(1),
            max_delay: Duration::from_secs(2),
            max_concurrent_checks: 2,
        })
    }

    #[test]
    fn failures_slow_down_then_stop_a_client_across_connections() {
        let l = limits();
        let t = Instant::now();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(l.allowed(ip, "alice", t));
        assert_eq!(l.failed(ip, "alice", t), Duration::from_secs(1));
        assert_eq!(l.failed(ip, "bob", t), Duration::from_secs(2));
        assert_eq!(l.failed(ip, "carol", t), Duration::from_secs(2));
        // Three failures from this address: no more checks, whatever the name...
        assert!(!l.allowed(ip, "dave", t));
        // ...from its whole /64 for IPv6 too, and only until the window has passed.
        assert!(l.allowed("192.0.2.8".parse().unwrap(), "dave", t));
        assert!(l.allowed(ip, "dave", t + Duration::from_secs(60)));
    }

    #[test]
    fn a_user_name_is_protected_from_many_addresses() {
        let l = limits();
        let t = Instant::now();
        for n in 1..=3u8 {
            let ip: IpAddr = format!("2001:db8:{n}::1").parse().unwrap();
            l.failed(ip, "Alice", t);
        }
        assert!(!l.allowed("198.51.100.1".parse().unwrap(), "alice", t));
        assert!(l.allowed("198.51.100.1".parse().unwrap(), "bob", t));
        // An IPv6 client is its /64.
        let a: IpAddr = "2001:db8:9::1".parse().unwrap();
        let b: IpAddr = "2001:db8:9::ffff".parse().unwrap();
        for _ in 0..3 {
            l.failed(a, "x", t);
        }
        assert!(!l.allowed(b, "y", t));
    }

    #[test]
    fn memory_stays_bounded() {
        let l = limits();
        let t = Instant::now();
        for n in 0..(MAX_WINDOWS as u32 + 10) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(n));
            l.failed(ip, "same", t + Duration::from_millis(u64::from(n)));
        }
        assert!(l.tracked() <= MAX_WINDOWS, "{}", l.tracked());
    }
}
