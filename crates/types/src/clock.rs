//! The one clock: read where a component is built and passed in, so that tests can set the
//! time (a greylisting delay, an expiry) instead of waiting for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::UnixTime;

/// Where the time comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> UnixTime {
        UnixTime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
    }
}

/// The system's clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that stands still until moved: for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn at(time: UnixTime) -> ManualClock {
        ManualClock(AtomicU64::new(time.0))
    }

    /// Moves the time on by `seconds`.
    pub fn advance(&self, seconds: u64) {
        self.0.fetch_add(seconds, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> UnixTime {
        UnixTime(self.0.load(Ordering::Relaxed))
    }
}
