//! Limits on password guessing, across connections and across the site's nodes: failed logins
//! are counted per client (an IPv6 client as its /64) and per user name in fixed windows, in
//! the site's state ([`backstop_state::State`]: this node's memory by default, Redis for a site
//! of several nodes, so a guesser spread over the MX hosts is counted once). Each failure is
//! answered after a delay that grows with the count, and past the limit AUTH is refused for the
//! rest of the window (`454 4.7.0`) without a password check at all. Password checks themselves
//! are bounded by [`AuthLimits::checks`], so a burst of logins queues instead of growing memory
//! (each argon2 check takes about 19 MiB).
//!
//! When the site's state does not answer, this node's own counters count instead, with a
//! warning, as for rate limits: the limit then holds per node, and a login is never refused
//! for the store's sake.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use backstop_state::{Key, MemoryCounters, State};
use backstop_types::text::Escaped;
use backstop_types::UnixTime;
use tokio::sync::Semaphore;
use tracing::warn;

/// The settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLimitConfig {
    /// Failed logins per client, and per user name, in one window before AUTH is refused.
    pub max_failures: u32,
    /// How long failures are remembered: the width of the fixed windows they are counted in.
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
pub struct AuthLimits {
    config: AuthLimitConfig,
    /// The site's state, where the failures are counted.
    state: Arc<dyn State>,
    /// This node's own counts, for when the site's state does not answer.
    own: Arc<MemoryCounters>,
    checks: Arc<Semaphore>,
}

impl std::fmt::Debug for AuthLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLimits")
            .field("config", &self.config)
            .field("state", &self.state.describe())
            .finish_non_exhaustive()
    }
}

impl AuthLimits {
    /// Limits counting in `state`.
    pub fn new(config: AuthLimitConfig, state: Arc<dyn State>) -> AuthLimits {
        AuthLimits {
            checks: Arc::new(Semaphore::new(config.max_concurrent_checks.max(1))),
            config,
            state,
            own: Arc::new(MemoryCounters::default()),
        }
    }

    /// The same counts under new settings (a reload).
    pub fn resized(&self, config: AuthLimitConfig) -> AuthLimits {
        AuthLimits {
            checks: Arc::new(Semaphore::new(config.max_concurrent_checks.max(1))),
            config,
            state: Arc::clone(&self.state),
            own: Arc::clone(&self.own),
        }
    }

    /// The permits for password checks: hold one while a check runs.
    pub fn checks(&self) -> Arc<Semaphore> {
        Arc::clone(&self.checks)
    }

    /// Whether a login by `user` from `client` may be checked at all now.
    pub async fn allowed(&self, client: IpAddr, user: &str, now: UnixTime) -> bool {
        for key in keys(client, user) {
            if self.add(&key, 0, now).await >= u64::from(self.config.max_failures) {
                return false;
            }
        }
        true
    }

    /// Counts a failed login; returns how long to wait before answering it.
    pub async fn failed(&self, client: IpAddr, user: &str, now: UnixTime) -> Duration {
        let mut worst = 0;
        for key in keys(client, user) {
            worst = worst.max(self.add(&key, 1, now).await);
        }
        self.config
            .delay_step
            .saturating_mul(u32::try_from(worst).unwrap_or(u32::MAX))
            .min(self.config.max_delay)
    }

    /// Adds `amount` to `key`'s failures in the window holding `now`: the count after it.
    async fn add(&self, key: &Key, amount: u64, now: UnixTime) -> u64 {
        let window = self.config.window;
        match self.state.add_in_window(key, amount, window, now).await {
            Ok(count) => count,
            Err(e) => {
                let counted = String::from_utf8_lossy(&key.bytes()).into_owned();
                warn!(error = %e, key = %Escaped(&counted), state = %self.state.describe(), "failed-login counter of the site unavailable: this node's own counts");
                self.own.add(key, amount, window, now)
            }
        }
    }
}

/// The counters a login touches: its client's (an IPv6 client is its /64: one host usually has
/// a whole /64) and its user name's (case-folded, as user stores usually compare names).
fn keys(client: IpAddr, user: &str) -> [Key; 2] {
    [
        Key::AuthFailures(format!("ip:{}", crate::limits::client_network(client))),
        Key::AuthFailures(format!("user:{}", user.to_lowercase())),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use backstop_state::MemoryState;

    const T0: UnixTime = UnixTime(1_800_000_000);

    fn config() -> AuthLimitConfig {
        AuthLimitConfig {
            max_failures: 3,
            window: Duration::from_secs(60),
            delay_step: Duration::from_secs(1),
            max_delay: Duration::from_secs(2),
            max_concurrent_checks: 2,
        }
    }

    fn limits() -> AuthLimits {
        AuthLimits::new(config(), Arc::new(MemoryState::default()))
    }

    /// The start of the window holding T0, so that a test stays inside one window.
    fn start() -> UnixTime {
        UnixTime(backstop_state::window_start(Duration::from_secs(60), T0))
    }

    #[tokio::test]
    async fn failures_slow_down_then_stop_a_client_across_connections() {
        let l = limits();
        let t = start();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(l.allowed(ip, "alice", t).await);
        assert_eq!(l.failed(ip, "alice", t).await, Duration::from_secs(1));
        assert_eq!(l.failed(ip, "bob", t).await, Duration::from_secs(2));
        assert_eq!(l.failed(ip, "carol", t).await, Duration::from_secs(2));
        // Three failures from this address: no more checks, whatever the name...
        assert!(!l.allowed(ip, "dave", t).await);
        // ...from this address only, and only until the window has passed.
        assert!(l.allowed("192.0.2.8".parse().unwrap(), "dave", t).await);
        assert!(l.allowed(ip, "dave", UnixTime(t.0 + 60)).await);
    }

    #[tokio::test]
    async fn a_user_name_is_protected_from_many_addresses() {
        let l = limits();
        let t = start();
        for n in 1..=3u8 {
            let ip: IpAddr = format!("2001:db8:{n}::1").parse().unwrap();
            l.failed(ip, "Alice", t).await;
        }
        assert!(!l.allowed("198.51.100.1".parse().unwrap(), "alice", t).await);
        assert!(l.allowed("198.51.100.1".parse().unwrap(), "bob", t).await);
        // An IPv6 client is its /64.
        let a: IpAddr = "2001:db8:9::1".parse().unwrap();
        let b: IpAddr = "2001:db8:9::ffff".parse().unwrap();
        for _ in 0..3 {
            l.failed(a, "x", t).await;
        }
        assert!(!l.allowed(b, "y", t).await);
    }

    /// Two nodes with one state: failures at either count for both; a reload keeps them.
    #[tokio::test]
    async fn failures_are_counted_in_the_sites_state() {
        let site: Arc<dyn State> = Arc::new(MemoryState::default());
        let a = AuthLimits::new(config(), Arc::clone(&site));
        let b = AuthLimits::new(config(), Arc::clone(&site));
        let t = start();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        a.failed(ip, "alice", t).await;
        b.failed(ip, "alice", t).await;
        a.failed(ip, "alice", t).await;
        assert!(!b.allowed(ip, "bob", t).await);
        assert!(!a.resized(config()).allowed(ip, "bob", t).await);
    }

    /// The site's state down: the node's own counts still hold the guesser back.
    #[tokio::test]
    async fn the_nodes_own_counts_hold_when_the_site_state_is_down() {
        let l = AuthLimits::new(config(), Arc::new(backstop_state::Unreachable));
        let t = start();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(l.allowed(ip, "alice", t).await);
        for _ in 0..3 {
            l.failed(ip, "alice", t).await;
        }
        assert!(!l.allowed(ip, "alice", t).await);
    }
}
