//! CPU-heavy checks off the async worker threads: regular expressions over a whole decoded
//! message, and DKIM's body hashes. A worker thread that computes for a second stalls every
//! session scheduled on it; and a check running inside the content deadline's future cannot be
//! stopped by that deadline. So such work runs on the blocking pool (or, where it must borrow
//! the message, in place with the worker handed over to other tasks), and at most
//! [`slots`] of it at once, so that a burst of large messages queues for CPU instead of piling
//! up threads.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

/// The permits for CPU-heavy work: twice the CPUs.
pub fn slots() -> Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    Arc::clone(SLOTS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(2, usize::from);
        Arc::new(Semaphore::new(cpus * 2))
    }))
}

/// Runs `work` on the blocking pool under a permit. The caller's future can be dropped (a
/// deadline passed) while it runs; the work then finishes on its own and its result is lost.
pub async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let permit = slots()
        .acquire_owned()
        .await
        .map_err(|e| format!("CPU slots closed: {e}"))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
    .map_err(|e| format!("check task failed: {e}"))
}

/// Runs `work` where it is, under a permit, telling the runtime first so it moves this worker's
/// other tasks elsewhere (for work that borrows what it reads). On a single-threaded runtime
/// (tests) it simply runs.
pub async fn in_place<T>(work: impl FnOnce() -> T) -> T {
    let _permit = slots().acquire_owned().await.ok();
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadline_is_kept_while_work_runs_elsewhere() {
        let started = std::time::Instant::now();
        let slow = off_thread(|| std::thread::sleep(std::time::Duration::from_millis(500)));
        let result = tokio::time::timeout(std::time::Duration::from_millis(50), slow).await;
        assert!(result.is_err());
        assert!(started.elapsed() < std::time::Duration::from_millis(400));
        assert_eq!(off_thread(|| 7).await, Ok(7));
        assert_eq!(in_place(|| 8).await, 8);
    }
}
