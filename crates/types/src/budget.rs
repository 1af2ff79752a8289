//! The memory the server may hold for message data in progress (`[smtp] max_message_memory`),
//! receiving and delivering together: each session covers what its message's buffer takes
//! before the buffer grows, and gives it back once the message is stored or refused; each
//! delivery covers the message it reads from the queue while it sends it. A DATA or BDAT that
//! finds the budget used up is answered `452 4.3.1` (try later) instead of growing the server
//! until the kernel kills it; the client keeps its message. A delivery waits for room.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The budget, shared by every session of every listener and by delivery (and kept across
/// reloads).
#[derive(Debug)]
pub struct MemoryBudget {
    limit: AtomicU64,
    used: AtomicU64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit: AtomicU64::new(limit),
            used: AtomicU64::new(0),
        })
    }

    /// A new limit (a reload); what is held stays held.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Octets held now by all sessions.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `octets` if they fit under the limit.
    fn take(&self, octets: u64) -> bool {
        let limit = self.limit();
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(octets).filter(|after| *after <= limit)
            })
            .is_ok()
    }

    fn give_back(&self, octets: u64) {
        self.used.fetch_sub(octets, Ordering::AcqRel);
    }
}

/// One session's share of the budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    held: u64,
}

impl Reservation {
    pub fn new(budget: &Arc<MemoryBudget>) -> Reservation {
        Reservation {
            budget: Arc::clone(budget),
            held: 0,
        }
    }

    /// Makes the share `octets` (more or less than now); false, holding what it held, when
    /// more does not fit.
    pub fn cover(&mut self, octets: u64) -> bool {
        if octets > self.held {
            if !self.budget.take(octets - self.held) {
                return false;
            }
        } else {
            self.budget.give_back(self.held - octets);
        }
        self.held = octets;
        true
    }

    pub fn held(&self) -> u64 {
        self.held
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_fit_under_the_limit_and_come_back() {
        let budget = MemoryBudget::new(100);
        let mut a = Reservation::new(&budget);
        let mut b = Reservation::new(&budget);
        assert!(a.cover(60));
        assert!(!b.cover(50), "over the limit");
        assert_eq!(b.held(), 0);
        assert!(b.cover(40));
        assert_eq!(budget.used(), 100);
        assert!(a.cover(10), "shrinking always works");
        assert_eq!(budget.used(), 50);
        drop(a);
        assert_eq!(budget.used(), 40);
        budget.set_limit(30);
        assert!(!b.cover(41));
        assert!(b.cover(20));
        drop(b);
        assert_eq!(budget.used(), 0);
        // A huge request never wraps around.
        assert!(!Reservation::new(&budget).cover(u64::MAX));
    }
}
